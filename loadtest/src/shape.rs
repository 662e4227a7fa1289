//! Faults on one client's link, made with the kernel's own tools (root only; each goes
//! when dropped). A rate limit on its downlink (scenario `[shape]`): on the loopback
//! device an HTB root sends the datagrams to that client's address through a token bucket
//! (tbf) of the given rate, and everything else through a class as fast as the device.
//! Random loss both ways (scenario `[loss]`): nftables drops that share of the UDP
//! datagrams to and from its address as they arrive (on the input hook: a drop on the
//! output hook fails the sender's send, and a sender that tries again sees less loss than
//! asked). netem is not on every kernel; htb, tbf, u32 and nftables are.

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

/// Random loss of `percent` of the UDP datagrams to and from one address, both ways.
pub struct Lossy {
    table: String,
}

impl Lossy {
    pub fn on(address: Ipv4Addr, percent: u32) -> Result<Self, String> {
        // Tables a killed run left behind would drop this run's datagrams unasked.
        if let Ok(listed) = Command::new(nft()?).args(["list", "tables"]).output() {
            for line in String::from_utf8_lossy(&listed.stdout).lines() {
                if let Some(stale) =
                    line.strip_prefix("table inet ").filter(|t| t.starts_with("huiyi_loadtest_loss_"))
                {
                    let _ = Command::new(nft()?).args(["delete", "table", "inet", stale]).status();
                }
            }
        }
        let table = format!("huiyi_loadtest_loss_{}", std::process::id());
        let rules = format!(
            "table inet {table} {{\n chain in {{\n  type filter hook input priority 0; policy accept;\n  \
             iifname \"lo\" ip daddr {address} meta l4proto udp numgen random mod 100 < {percent} counter drop\n  \
             iifname \"lo\" ip saddr {address} meta l4proto udp numgen random mod 100 < {percent} counter drop\n }}\n}}\n"
        );
        let mut child = Command::new(nft()?)
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        use std::io::Write;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes()).map_err(|e| format!("nft: {e}"))?;
        }
        match child.wait() {
            Ok(status) if status.success() => Ok(Self { table }),
            _ => Err("nft refused the rules (root needed)".into()),
        }
    }

    /// Datagrams dropped so far, both ways.
    pub fn dropped(&self) -> u64 {
        let Ok(nft) = nft() else { return 0 };
        let out = Command::new(nft).args(["list", "table", "inet", &self.table]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.split("counter packets ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Lossy {
    fn drop(&mut self) {
        if let Ok(nft) = nft() {
            let _ = Command::new(nft).args(["delete", "table", "inet", &self.table]).status();
        }
    }
}

fn nft() -> Result<&'static str, String> {
    ["/usr/sbin/nft", "nft"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .ok_or_else(|| "nft not found (Debian: nftables)".to_string())
}
