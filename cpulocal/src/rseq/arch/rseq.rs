//! What the rseq engines of all architectures share: the entry point
//! [`section`], which picks the index mode once, the exits every abort and
//! compare-failure label takes, and the tests that drive sections on a fake
//! `struct rseq`. The asm itself is in the architecture's file (`imp`).
//!
//! # Safety
//!
//! [`section`] and the exits are `unsafe fn`s whose `# Safety` lists say what
//! the pointers must be.
#![allow(unsafe_code)]

/// Emits one critical section through the architecture's
/// `rseq_section_with!` (descriptor, arming store, check, body, commit and
/// the signed abort label, see each file), with the delay loops' operands
/// when the `inject` feature (stress testing only) is on: a loop then sits
/// at three numbered points of every section, 1 before the check, 2 after
/// it, 3 before the commit; see [`crate::inject`]. The architecture's
/// `inject_point!` writes the loop; without the feature the points are empty.
#[cfg(not(feature = "inject"))]
macro_rules! rseq_section {
    ($($t:tt)*) => { rseq_section_with!([] $($t)*) };
}

#[cfg(feature = "inject")]
macro_rules! rseq_section {
    ($($t:tt)*) => {
        rseq_section_with!(
            [inj = out(reg) _, INJECT = sym crate::inject::LOOPS,]
            $($t)*
        )
    };
}

/// Without the `inject` feature an injection point is empty.
#[cfg(not(feature = "inject"))]
macro_rules! inject_point {
    ($n:literal) => {
        ""
    };
}

use core::mem::offset_of;

use super::{imp, Outcome};
use crate::fenced::fence::Fence;
use crate::rseq::abi::Rseq;
use crate::shape::Order;
use crate::shape::Shape;

/// Runs `shape` as one critical section on the slot whose fence is `fence`,
/// for the thread whose area is `area`; `index` is the offset of the slot
/// numbering's field in the area. Each architecture's asm is the shape's
/// meaning ([`Shape::apply`]) with the commit as its last instruction, a
/// store-release for [`Order::Release`] where plain stores are not.
///
/// # Safety
///
/// - `area` points to a writable `struct rseq`: the calling thread's
///   registered area, or a fake one in tests; `index` is the offset of a u32
///   field in it (`cpu_id` or `mm_cid`, the slot numbering's);
/// - `fence` points to the live fence of the slot the shape's data belongs
///   to;
/// - the shape's pointers are valid for it (see [`crate::shape`]).
#[inline(always)]
pub(crate) unsafe fn section(
    area: *mut Rseq,
    index: usize,
    fence: *const Fence,
    shape: &Shape,
    order: Order,
) -> Outcome {
    // One copy of the sections per index mode, its field's offset in the
    // instructions: a register less, and the mode's test once per
    // operation (hoisted out of callers' loops).
    if index == offset_of!(Rseq, cpu_id) {
        // SAFETY: the caller's contract.
        unsafe { imp::section_by::<false>(area, fence, shape, order) }
    } else {
        debug_assert_eq!(index, offset_of!(Rseq, mm_cid));
        // SAFETY: the caller's contract.
        unsafe { imp::section_by::<true>(area, fence, shape, order) }
    }
}

/// What an abort label returns: [`Outcome::Fenced`] if the fence the section
/// checked is held, else [`Outcome::Aborted`].
#[inline(always)]
pub(super) fn fenced_or_aborted(fence: *const Fence) -> Outcome {
    // SAFETY: `fence` is the live fence the section checked (its caller's
    // promise); the fence word is an atomic.
    if unsafe { &*fence }.is_held() {
        Outcome::Fenced
    } else {
        Outcome::Aborted
    }
}

/// The addresses the sections of this binary list in
/// `__rseq_cs_ptr_array`: each that of a static `struct rseq_cs`.
#[cfg(test)]
pub(crate) fn descriptor_addresses() -> &'static [u64] {
    extern "C" {
        // Bounds of `__rseq_cs_ptr_array`, defined by the linker.
        static __start___rseq_cs_ptr_array: u64;
        static __stop___rseq_cs_ptr_array: u64;
    }
    // SAFETY: the linker bounds an array of descriptor addresses in this
    // binary's static data, which is never written.
    unsafe {
        let start = core::ptr::addr_of!(__start___rseq_cs_ptr_array);
        let stop = core::ptr::addr_of!(__stop___rseq_cs_ptr_array);
        let n = stop.offset_from(start) as usize;
        core::slice::from_raw_parts(start, n)
    }
}

/// The descriptor a section armed in `area`: the kernel reads it at the
/// thread's next preemption, so it must be one of this binary's. Fails the
/// test (a panic) when `rseq_cs` is 0 or not a listed descriptor's address.
#[cfg(test)]
pub(crate) fn armed(area: &crate::rseq::abi::Rseq) -> crate::rseq::abi::RseqCs {
    let at = area.rseq_cs;
    assert_ne!(at, 0, "the section did not arm rseq_cs");
    assert!(
        descriptor_addresses().contains(&at),
        "rseq_cs = {at:#x}, the address of no listed descriptor"
    );
    // SAFETY: checked just above to be a listed descriptor's address: a
    // static `struct rseq_cs` of this binary.
    unsafe { *(at as *const crate::rseq::abi::RseqCs) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fenced::fence::HELD;
    use crate::rseq::abi::RseqCs;
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// A counter's slot as the tests drive it: a fence word, then a value.
    #[repr(C)]
    struct TestSlot {
        fence: Fence,
        value: AtomicUsize,
    }

    /// A free-standing slot whose fence word is `fence_word`.
    fn test_slot(fence_word: u32, value: usize) -> TestSlot {
        let slot = TestSlot {
            fence: Fence::new(0),
            value: AtomicUsize::new(value),
        };
        slot.fence.set_for_test(fence_word);
        slot
    }

    /// `slot.value += n` as one section: the add shape.
    ///
    /// # Safety
    ///
    /// `area` is a live fake area.
    #[inline(always)]
    unsafe fn add(area: *mut Rseq, index: usize, slot: &TestSlot, n: isize) -> Outcome {
        let shape = Shape::AddStore {
            vo: Shape::offset(&slot.fence, slot.value.as_ptr()),
            count: n as usize,
        };
        // SAFETY: the caller's area; the slot's words are live locals.
        unsafe { section(area, index, &slot.fence, &shape, Order::Relaxed) }
    }

    impl TestSlot {
        fn value(&self) -> usize {
            self.value.load(Ordering::Relaxed)
        }
    }

    const CPU_ID: usize = offset_of!(Rseq, cpu_id);

    fn fake_area(cpu: u32) -> Box<Rseq> {
        let mut area = Box::new(Rseq::unregistered());
        area.cpu_id_start = cpu;
        area.cpu_id = cpu;
        area
    }

    #[test]
    fn commit_branch() {
        let mut area = fake_area(3);
        // The free fence of CPU 3's slot.
        let slot = test_slot(3, 10);
        // SAFETY: all pointers are to live locals.
        let out = unsafe { add(&mut *area, CPU_ID, &slot, -4) };
        assert_eq!(out, Outcome::Committed);
        assert_eq!(slot.value(), 6);
    }

    #[test]
    fn abort_branch_on_cpu_mismatch() {
        let mut area = fake_area(2);
        // CPU 3's slot; the thread is on CPU 2.
        let slot = test_slot(3, 10);
        // SAFETY: all pointers are to live locals.
        let out = unsafe { add(&mut *area, CPU_ID, &slot, 5) };
        assert_eq!(out, Outcome::Aborted);
        assert_eq!(slot.value(), 10, "an aborted section must not write");
        armed(&area);
    }

    #[test]
    fn fenced_branch() {
        let mut area = fake_area(1);
        // CPU 1's slot, held by holder 1234.
        let slot = test_slot(HELD | 1234, 10);
        // SAFETY: all pointers are to live locals.
        let out = unsafe { add(&mut *area, CPU_ID, &slot, 5) };
        assert_eq!(out, Outcome::Fenced);
        assert_eq!(slot.value(), 10, "a fenced section must not write");
        armed(&area);
    }

    #[test]
    fn mm_cid_sections_need_a_valid_cpu_id() {
        let mut area = fake_area(1);
        area.mm_cid = 0;
        let slot = test_slot(0, 10); // slot 0's free fence
        let mm_cid = offset_of!(Rseq, mm_cid);
        // SAFETY: all pointers are to live locals.
        let committed = unsafe { add(&mut *area, mm_cid, &slot, 1) };
        assert_eq!(committed, Outcome::Committed);
        // Unregistered under us: `mm_cid` still reads 0, `cpu_id` is -1.
        area.cpu_id = crate::rseq::abi::CPU_ID_UNINITIALIZED;
        // SAFETY: as above.
        let refused = unsafe { add(&mut *area, mm_cid, &slot, 1) };
        assert_eq!(refused, Outcome::Aborted);
        assert_eq!(slot.value(), 11, "the aborted section must not write");
    }

    /// Every descriptor the sections of this binary list, with its address.
    fn descriptors() -> Vec<(u64, RseqCs)> {
        descriptor_addresses()
            .iter()
            // SAFETY: each the address of a static `struct rseq_cs` emitted
            // by a section (`descriptor_addresses`).
            .map(|&p| (p, unsafe { *(p as *const RseqCs) }))
            .collect()
    }

    #[inline(never)]
    fn add_out_of_line(area: *mut Rseq, slot: &TestSlot, n: isize) -> Outcome {
        // SAFETY: the test passes a live fake area.
        unsafe { add(area, CPU_ID, slot, n) }
    }

    #[test]
    fn descriptors_decode() {
        let all = descriptors();
        assert!(!all.is_empty(), "no descriptor in __rseq_cs_ptr_array");
        for (at, cs) in &all {
            assert_eq!(at % 32, 0, "descriptor at {at:#x} not 32-byte aligned");
            assert_eq!((cs.version, cs.flags), (0, 0));
            let (start, end) = (cs.start_ip, cs.start_ip + cs.post_commit_offset);
            assert!(
                cs.abort_ip < start || cs.abort_ip >= end,
                "abort inside the section: {cs:?}"
            );
            // SAFETY: the four bytes before `abort_ip`, code of this binary.
            let signature = unsafe { ((cs.abort_ip - 4) as *const u32).read_unaligned() };
            assert_eq!(
                signature,
                crate::rseq::abi::RSEQ_SIG,
                "the signature must precede abort_ip"
            );
            imp::check_descriptor(cs);
        }
        // One of them is the section inlined in `add_out_of_line`.
        let f = add_out_of_line as *const () as usize as u64;
        assert!(
            all.iter()
                .any(|(_, cs)| (f..f + 512).contains(&cs.start_ip)),
            "add's section is not listed"
        );
        // And a section leaves rseq_cs armed with its own descriptor (the
        // kernel clears it lazily): the one that starts in that function.
        let mut area = fake_area(0);
        let slot = test_slot(0, 0);
        assert_eq!(add_out_of_line(&mut *area, &slot, 1), Outcome::Committed);
        let cs = armed(&area);
        assert!(
            (f..f + 512).contains(&cs.start_ip),
            "rseq_cs does not point at the section that ran: {cs:?}"
        );
    }
}
