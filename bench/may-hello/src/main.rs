//! may-hello: the bare may_minihttp server used as a peer in `bench/http_peers.sh`.
//!
//! Answers every request (the bench drives `GET /health`) with a JSON body of `--body-bytes`
//! (default `{"status":"pass"}`, 17 bytes; the bench pads it to the size of coinbit's health
//! document so that both put the same bytes on the wire), using may_minihttp's own connection
//! loop and nothing else.
//!
//! Usage: may-hello [--port 18081] [--workers 1] [--cpu N] [--host 127.0.0.1] [--body-bytes N]

use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};
use std::io;
use std::process::exit;

#[derive(Clone)]
struct Hello {
    body: &'static str,
}

impl HttpService for Hello {
    fn call(&mut self, _req: Request, rsp: &mut Response) -> io::Result<()> {
        rsp.header("Content-Type: application/json");
        rsp.body(self.body);
        Ok(())
    }
}

struct HelloFactory {
    body: &'static str,
}

impl HttpServiceFactory for HelloFactory {
    type Service = Hello;
    fn new_service(&self, _id: usize) -> Hello {
        Hello { body: self.body }
    }
}

/// `{"status":"pass"}` padded with a `pad` field to `bytes` bytes (never shorter than the base).
fn padded_body(bytes: usize) -> String {
    const BASE: &str = "{\"status\":\"pass\"}";
    const WRAPPER: usize = "{\"status\":\"pass\",\"pad\":\"\"}".len();
    if bytes <= WRAPPER {
        return BASE.to_string();
    }
    format!(
        "{{\"status\":\"pass\",\"pad\":\"{}\"}}",
        "x".repeat(bytes - WRAPPER)
    )
}

struct Args {
    host: String,
    port: u16,
    workers: usize,
    cpu: Option<usize>,
    body_bytes: usize,
}

const USAGE: &str = "usage: may-hello [--port PORT] [--workers N] [--cpu CPU] [--host ADDR]\n\
  --port     TCP port to listen on (default 18081)\n\
  --workers  may worker threads (default 1)\n\
  --cpu      pin the process (and so every may thread) to this CPU\n\
  --host     address to bind (default 127.0.0.1)\n\
  --body-bytes  pad the JSON body to this many bytes (default 17: {\"status\":\"pass\"})";

fn parse_args() -> Args {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 18081,
        workers: 1,
        cpu: None,
        body_bytes: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            exit(0);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let value = inline.or_else(|| it.next()).unwrap_or_else(|| {
            eprintln!("may-hello: {name} needs a value\n{USAGE}");
            exit(2)
        });
        let bad = |what: &str| -> ! {
            eprintln!("may-hello: bad value for {name}: {value:?} ({what})");
            exit(2)
        };
        match name.as_str() {
            "--port" => {
                a.port = value
                    .parse()
                    .unwrap_or_else(|_| bad("expected a port number"))
            }
            "--workers" => {
                a.workers = value.parse().unwrap_or_else(|_| bad("expected a count"));
                if a.workers == 0 {
                    bad("must be at least 1");
                }
            }
            "--cpu" => a.cpu = Some(value.parse().unwrap_or_else(|_| bad("expected a CPU id"))),
            "--host" => a.host = value,
            "--body-bytes" => {
                a.body_bytes = value
                    .parse()
                    .unwrap_or_else(|_| bad("expected a byte count"))
            }
            _ => {
                eprintln!("may-hello: unknown flag {name}\n{USAGE}");
                exit(2)
            }
        }
    }
    a
}

fn main() {
    let args = parse_args();

    // Pin before may starts its scheduler: the worker, timer and helper threads it spawns
    // inherit this thread's affinity mask, so the whole server stays on one CPU.
    if let Some(cpu) = args.cpu {
        let known = core_affinity::get_core_ids().unwrap_or_default();
        if !known.iter().any(|c| c.id == cpu) {
            eprintln!("may-hello: --cpu {cpu} is not an allowed CPU of this process");
            exit(2);
        }
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            eprintln!("may-hello: could not pin to CPU {cpu}");
            exit(1);
        }
    }
    may::config().set_workers(args.workers);

    let addr = format!("{}:{}", args.host, args.port);
    let body: &'static str = Box::leak(padded_body(args.body_bytes).into_boxed_str());
    let server = HelloFactory { body }.start(&addr).unwrap_or_else(|e| {
        eprintln!("may-hello: cannot listen on {addr}: {e}");
        exit(1)
    });
    eprintln!(
        "may-hello listening on {addr} (workers={}, cpu={})",
        args.workers,
        args.cpu.map_or("any".to_string(), |c| c.to_string())
    );
    let _ = server.join();
}
