fn main() {
    println!("cargo:rustc-env=CLIPRT_PLACEHOLDER=1");
}
