//! Installing the recorder globally: once, then a typed error.

use cpulocal_metrics::{Error, Recorder};

#[test]
fn install_once_then_already_installed() {
    let handle = Recorder::new().install().expect("first install");
    metrics::counter!("global_hits").increment(3);
    assert_eq!(
        handle.render(),
        "# TYPE global_hits counter\nglobal_hits 3\n\n"
    );
    let again = Recorder::new().install().unwrap_err();
    assert!(matches!(again, Error::AlreadyInstalled), "{again:?}");
    assert_eq!(
        again.to_string(),
        "a global metrics recorder is already installed"
    );
    assert!(matches!(
        cpulocal_metrics::Builder::new().install(),
        Err(Error::AlreadyInstalled)
    ));
    // The installed recorder is still the one recording.
    metrics::counter!("global_hits").increment(1);
    assert_eq!(
        handle.render(),
        "# TYPE global_hits counter\nglobal_hits 4\n\n"
    );
}
