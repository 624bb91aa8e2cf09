//! `ferry-probe`: the host tier's network helper.
//!
//! - `serve ADDR NAME`: listen on ADDR, answer every connection with `NAME\n`, close.
//!   Prints `listening` once bound.
//! - `connect ADDR COUNT`: connect COUNT times, one after another; print each answer, or
//!   `error: <kind> (errno N)` when the connect fails.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr, name] => serve(addr, name),
        ["connect", addr, count] => connect(addr, count),
        _ => Err("usage: ferry-probe serve ADDR NAME | connect ADDR COUNT".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))
}

fn serve(addr: &str, name: &str) -> Result<(), String> {
    let listener = TcpListener::bind(parse(addr)?).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.write_all(format!("{name}\n").as_bytes());
    }
    Ok(())
}

fn connect(addr: &str, count: &str) -> Result<(), String> {
    let addr = parse(addr)?;
    let count: usize = count
        .parse()
        .map_err(|e| format!("bad count {count:?}: {e}"))?;
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                match BufReader::new(stream).read_line(&mut line) {
                    Ok(_) => println!("{}", line.trim_end()),
                    Err(e) => println!("error: read: {e}"),
                }
            }
            Err(e) => println!(
                "error: {:?} (errno {})",
                e.kind(),
                e.raw_os_error().unwrap_or(0)
            ),
        }
    }
    Ok(())
}
