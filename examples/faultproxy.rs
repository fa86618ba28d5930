//! The test suite's fault-injecting TCP proxy as a program, for benchmarks at a given
//! round-trip time: `faultproxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_DELAY_MS`.

use mastofs_testkit::proxy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(up), Some(delay)) = (
        args.get(1).and_then(|a| a.parse::<u16>().ok()),
        args.get(2).and_then(|a| a.parse::<u16>().ok()),
        args.get(3).and_then(|a| a.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: faultproxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_DELAY_MS");
        std::process::exit(2);
    };
    let p = proxy::Proxy::start_on(listen, up);
    p.set_delay(std::time::Duration::from_secs_f64(delay / 1000.0));
    loop {
        std::thread::park();
    }
}
