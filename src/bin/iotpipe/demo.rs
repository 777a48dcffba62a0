pub fn run(_args: crate::args::DemoArgs) -> Result<(), String> {
    Err("demo: not yet".into())
}
