fn main() {
    println!("{}", cpulocal::status());
}
