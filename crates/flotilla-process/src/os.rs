//! What the process member asks Linux: whether a process still is the one it started
//! (`/proc/<pid>/stat`), which loopback addresses something listens on
//! (`/proc/net/tcp`), and signals to an instance's process group.
//!
//! ```text
//!   /proc/<pid>/stat ─▶ state (Z = zombie: dead), starttime (field 22: a reused pid
//!                       has another) ─▶ alive(pid, start)
//!   /proc/net/tcp(6) ─▶ local addresses and wildcard ports of LISTEN sockets ─▶ listening()
//!   /proc/*/environ  ─▶ FLOTILLA_INSTANCE=<state file> ─▶ find_marked() (a process
//!                       started just before the agent died, whose pid was never recorded)
//! ```

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The environment variable every instance carries: the path of its state file. It
/// finds a process whose pid was never recorded (the agent died between starting it
/// and writing its state).
pub const MARKER: &str = "FLOTILLA_INSTANCE";

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Its state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Field 22, when it started (clock ticks after boot): with the pid, the identity
    /// of a process.
    pub start_time: u64,
}

/// The stat of `pid`, if such a process exists.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a stat line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field 22 is `fields[19]`.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` is a live process (not a zombie) that started at `start_time`.
pub fn alive(pid: u32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.start_time == start_time)
}

/// Sends `signal` to the process group led by `pid` (instances run in their own group,
/// so what they started goes too).
pub fn signal_group(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    match killpg(Pid::from_raw(pid), signal) {
        Err(nix::Error::ESRCH) => Ok(()), // already gone
        other => other,
    }
}

/// What listens on this host's TCP ports, as far as picking an address goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listening {
    /// IPv4 addresses some socket listens on (`/proc/net/tcp`, state `0A`): taken,
    /// whatever the port.
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Ports something listens on at every address (`0.0.0.0`, or `::` which takes
    /// IPv4 too unless it is IPv6-only): no loopback address can have them.
    pub wildcard_ports: BTreeSet<u16>,
}

/// What listens now (see [`Listening`]).
pub fn listening() -> Listening {
    let mut out = Listening::default();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(file) {
            parse_listening(&text, v6, &mut out);
        }
    }
    out
}

fn parse_listening(text: &str, v6: bool, out: &mut Listening) {
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(state)) = (fields.nth(1), fields.nth(1)) else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        let Some((ip, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        if ip.bytes().all(|b| b == b'0') {
            out.wildcard_ports.insert(port);
        } else if !v6 && let Ok(raw) = u32::from_str_radix(ip, 16) {
            // The kernel prints the address (network byte order in memory) as a
            // native-endian u32 in hex: its native bytes are the address's bytes.
            out.addresses.insert(Ipv4Addr::from(raw.to_ne_bytes()));
        }
    }
}

/// The live process whose environment carries `FLOTILLA_INSTANCE=<marker>`, with its
/// start time. Scans every process this user may read: only for the rare state file
/// without a pid.
pub fn find_marked(marker: &str) -> Option<(u32, u64)> {
    let wanted = format!("{MARKER}={marker}");
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_bytes())
            && let Some(s) = stat(pid).filter(|s| s.state != 'Z')
        {
            return Some((pid, s.start_time));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (redis) (x y)) S 1 4242 4242 0 -1 4194560 197 0 0 0 1 2 0 0 20 0 5 0 987654 12345 67 18446744073709551615\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start_time: 987654
            })
        );
        let me = stat(std::process::id()).unwrap();
        assert!(alive(std::process::id(), me.start_time));
        assert!(
            !alive(std::process::id(), me.start_time + 1),
            "another start"
        );
    }

    #[test]
    fn listening_addresses_come_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0205007F:18EB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0300057F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1A0B 00000000000000000000000000000000:0000 0A 00000000:00000000
";
        let mut l = Listening::default();
        parse_listening(text, false, &mut l);
        parse_listening(v6, true, &mut l);
        assert_eq!(
            l.addresses,
            BTreeSet::from([Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 5, 0, 3)])
        );
        assert_eq!(l.wildcard_ports, BTreeSet::from([8080, 6667]));
    }
}
