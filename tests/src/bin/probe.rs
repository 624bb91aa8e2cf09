//! `ferry-probe`: the host tier's network helper.
//!
//! - `serve ADDR NAME`: listen on ADDR, answer every connection with `NAME\n`, close.
//!   Prints `listening` once bound.
//! - `connect ADDR COUNT`: connect COUNT times, one after another; print each answer, or
//!   `error: <kind> (errno N)` when the connect fails.
//! - `udp-listen ADDR`: print `listening`, then each datagram received, a line each.
//! - `udp-send ADDR TEXT [MARK]`: send TEXT in one datagram from an unconnected socket,
//!   with SO_MARK set to MARK when given (as the agent marks its own DNS sockets).

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
        ["udp-listen", addr] => udp_listen(addr),
        ["udp-send", addr, text] => udp_send(addr, text, None),
        ["udp-send", addr, text, mark] => udp_send(addr, text, Some(mark)),
        _ => Err(
            "usage: ferry-probe serve ADDR NAME | connect ADDR COUNT | udp-listen ADDR | \
                  udp-send ADDR TEXT [MARK]"
                .into(),
        ),
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

fn udp_listen(addr: &str) -> Result<(), String> {
    let socket =
        std::net::UdpSocket::bind(parse(addr)?).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    loop {
        let (n, _) = socket.recv_from(&mut buf).map_err(|e| e.to_string())?;
        println!("{}", String::from_utf8_lossy(&buf[..n]));
        std::io::stdout().flush().map_err(|e| e.to_string())?;
    }
}

fn udp_send(addr: &str, text: &str, mark: Option<&str>) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    if let Some(mark) = mark {
        let mark: u32 = parse_mark(mark)?;
        // SAFETY: a valid socket, and a pointer to a u32 of the length given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw const mark).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("SO_MARK: {}", std::io::Error::last_os_error()));
        }
    }
    socket
        .send_to(text.as_bytes(), parse(addr)?)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    Ok(())
}

fn parse_mark(mark: &str) -> Result<u32, String> {
    match mark.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => mark.parse(),
    }
    .map_err(|e| format!("bad mark {mark:?}: {e}"))
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
