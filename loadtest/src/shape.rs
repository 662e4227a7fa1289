//! A rate limit on one client's downlink (scenario `[shape]`): on the loopback device an
//! HTB root sends the datagrams to that client's address through a token bucket (tbf)
//! of the given rate, and everything else through a class as fast as the device. netem
//! is not on every kernel; htb, tbf and u32 are. Needs root; the limit goes when the
//! shaper is dropped.

use std::net::Ipv4Addr;
use std::process::Command;

pub struct Shaper {
    device: &'static str,
}

impl Shaper {
    /// Limit what `to` receives to `rate_kbit`, with a queue of at most 100 ms.
    pub fn limit(to: Ipv4Addr, rate_kbit: u32) -> Result<Self, String> {
        let device = "lo";
        let rate = format!("{rate_kbit}kbit");
        let dst = format!("{to}/32");
        let steps: [&[&str]; 5] = [
            &["qdisc", "add", "dev", device, "root", "handle", "1:", "htb", "default", "1", "r2q", "100000"],
            &["class", "add", "dev", device, "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit"],
            &["class", "add", "dev", device, "parent", "1:", "classid", "1:2", "htb", "rate", "100gbit"],
            &[
                "qdisc", "add", "dev", device, "parent", "1:2", "handle", "20:", "tbf", "rate", &rate,
                "burst", "16kb", "latency", "100ms",
            ],
            &[
                "filter", "add", "dev", device, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dst", &dst, "flowid", "1:2",
            ],
        ];
        let shaper = Self { device };
        for args in steps {
            tc(args)?;
        }
        Ok(shaper)
    }

    /// Datagrams the token bucket dropped so far (its queue was full).
    pub fn dropped(&self) -> u64 {
        let out = Command::new("tc").args(["-s", "qdisc", "show", "dev", self.device]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        // "qdisc tbf 20: ... \n Sent N bytes M pkt (dropped D, ..."
        text.split("qdisc ")
            .find(|q| q.starts_with("tbf"))
            .and_then(|q| q.split("dropped ").nth(1))
            .and_then(|d| d.split(',').next())
            .and_then(|d| d.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        let _ = tc(&["qdisc", "del", "dev", self.device, "root"]);
    }
}

fn tc(args: &[&str]) -> Result<(), String> {
    let out = Command::new("tc").args(args).output().map_err(|e| format!("cannot run tc: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("tc {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
