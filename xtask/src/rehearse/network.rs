//! The game day's network: several instances per tier, each in a network namespace of its
//! own, as EC2 instances each have their own interface. One bridge on this machine joins
//! them (the VPC); its address is the instances' gateway and the one address at which
//! they reach what the harness serves on loopback (the AWS endpoint, the database
//! stand-in, the RDS bundle's download), through DNAT, and 169.254.169.254 reaches the
//! metadata service the same way, so it sees which instance asks by its source address.
//! Their other traffic (the boot script's apt downloads from Debian's mirror) leaves
//! through this machine's own address (masquerade), as from a NAT gateway.
//!
//! Everything here is created by the run and removed when [`Network`] is dropped or on Ctrl-C:
//! the bridge, the namespaces, the firewall table and the forwarding setting's old value.

use std::net::Ipv4Addr;
use std::process::Stdio;

use anyhow::Context;

use crate::system::{output, run_command};

/// The bridge standing in for the VPC.
const BRIDGE: &str = "anbgd0";
/// The nftables table of the game day's address translation.
const TABLE: &str = "anb_gameday";
/// The instances' subnet: a /24 nobody routes (RFC 1918, unlikely on a developer's LAN).
const SUBNET: [u8; 3] = [10, 231, 0];
pub(super) const SUBNET_CIDR: &str = "10.231.0.0/24";
/// Where the instances' addresses start (.1 is the gateway).
const FIRST_INSTANCE: u8 = 10;
/// Namespaces are named with this prefix and the instance's slot.
const NETNS_PREFIX: &str = "anbgd-";
const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";
/// Its value before the game day, kept until restored (a killed run leaves it here).
const FORWARDING_SAVED: &str = "/run/anb-gameday.ip_forward";

/// A port on this machine's loopback that instances reach at the gateway's address.
#[derive(Clone, Copy, Debug)]
pub(super) struct Forward {
    /// The port the instances use at the gateway.
    pub(super) port: u16,
    /// Where it goes on this machine.
    pub(super) to: (Ipv4Addr, u16),
}

/// The bridge, the translation table and the forwarding switch, until dropped.
pub(super) struct Network {
    _private: (),
}

/// One instance's namespace and address.
#[derive(Clone, Debug)]
pub(super) struct Netns {
    pub(super) name: String,
    pub(super) address: Ipv4Addr,
}

impl Netns {
    /// Where systemd-nspawn finds it (`--network-namespace-path`).
    pub(super) fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

/// The gateway's address: what instances use for every harness service.
pub(super) fn gateway() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1)
}

/// The address of the instance in `slot` (0-based).
pub(super) fn instance_address(slot: u8) -> Ipv4Addr {
    Ipv4Addr::new(
        SUBNET[0],
        SUBNET[1],
        SUBNET[2],
        FIRST_INSTANCE.saturating_add(slot),
    )
}

/// The nftables script: each forward and the metadata address DNAT'd from the bridge to
/// loopback, and the instances' other traffic masqueraded out.
pub(super) fn nft_script(forwards: &[Forward], imds_port: u16) -> String {
    let gateway = gateway();
    let subnet = SUBNET_CIDR;
    let mut rules = format!(
        "table ip {TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority -100;\n\
         \x20   iifname \"{BRIDGE}\" ip daddr 169.254.169.254 tcp dport 80 dnat to 127.0.0.1:{imds_port}\n"
    );
    for forward in forwards {
        rules.push_str(&format!(
            "    iifname \"{BRIDGE}\" ip daddr {gateway} tcp dport {} dnat to {}:{}\n",
            forward.port, forward.to.0, forward.to.1
        ));
    }
    rules.push_str(&format!(
        "  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100;\n\
         \x20   ip saddr {subnet} oifname != \"{BRIDGE}\" masquerade\n  }}\n}}\n"
    ));
    rules
}

impl Network {
    /// Creates the bridge and the translation of `forwards` and of the metadata address
    /// to `imds_port` on loopback. Anything a killed run left behind is removed first.
    pub(super) fn create(forwards: &[Forward], imds_port: u16) -> anyhow::Result<Self> {
        remove_leftovers();
        // The value before any game day: a killed run left it saved, with its own in force.
        let forwarding_before = std::fs::read_to_string(FORWARDING_SAVED)
            .or_else(|_| std::fs::read_to_string(FORWARDING))
            .unwrap_or_else(|_| "0".into())
            .trim()
            .to_owned();
        std::fs::write(FORWARDING_SAVED, &forwarding_before)?;
        super::interruption::on_interrupt(restore);
        // Dropped on any error below: what was made so far is removed.
        let network = Self { _private: () };
        let gateway = gateway();
        for args in [
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["addr", "add", &format!("{gateway}/24"), "dev", BRIDGE],
            vec!["link", "set", BRIDGE, "up"],
        ] {
            run_command(crate::system::command("ip").args(&args))
                .context("create the game day's bridge")?;
        }
        // Loopback addresses as DNAT targets for packets that arrive on the bridge.
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet"),
            "1",
        )?;
        std::fs::write(FORWARDING, "1")?;
        let mut nft = crate::system::command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("start nft")?;
        use std::io::Write;
        nft.stdin
            .take()
            .context("nft's input")?
            .write_all(nft_script(forwards, imds_port).as_bytes())?;
        anyhow::ensure!(
            nft.wait()?.success(),
            "nft refused the game day's translation table"
        );
        Ok(network)
    }

    /// A namespace for the instance in `slot`, joined to the bridge, with its address and
    /// the gateway as default route.
    pub(super) fn attach(&self, slot: u8) -> anyhow::Result<Netns> {
        let netns = Netns {
            name: format!("{NETNS_PREFIX}{slot}"),
            address: instance_address(slot),
        };
        let _ = crate::system::command("ip")
            .args(["netns", "delete", &netns.name])
            .stderr(Stdio::null())
            .status();
        let host_side = format!("vgd{slot}");
        let _ = crate::system::command("ip")
            .args(["link", "delete", &host_side])
            .stderr(Stdio::null())
            .status();
        let inside = format!("{}/24", netns.address);
        let gateway = gateway().to_string();
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &netns.name],
            vec![
                "link",
                "add",
                &host_side,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns.name,
            ],
            vec!["link", "set", &host_side, "master", BRIDGE],
            vec!["link", "set", &host_side, "up"],
            vec!["-n", &netns.name, "link", "set", "lo", "up"],
            vec!["-n", &netns.name, "addr", "add", &inside, "dev", "eth0"],
            vec!["-n", &netns.name, "link", "set", "eth0", "up"],
            vec![
                "-n",
                &netns.name,
                "route",
                "add",
                "default",
                "via",
                &gateway,
            ],
        ];
        for args in steps {
            run_command(crate::system::command("ip").args(&args))
                .with_context(|| format!("network namespace {}", netns.name))?;
        }
        Ok(netns)
    }

    /// Removes a namespace (its veth pair goes with it).
    pub(super) fn detach(&self, netns: &Netns) {
        let _ = crate::system::command("ip")
            .args(["netns", "delete", &netns.name])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        restore();
    }
}

/// Everything removed and the forwarding switch as it was before the first game day.
fn restore() {
    remove_leftovers();
    if let Ok(before) = std::fs::read_to_string(FORWARDING_SAVED) {
        let _ = std::fs::write(FORWARDING, before.trim());
        let _ = std::fs::remove_file(FORWARDING_SAVED);
    }
}

/// The bridge, the table and every namespace of the game day, whoever left them.
fn remove_leftovers() {
    let _ = crate::system::command("nft")
        .args(["delete", "table", "ip", TABLE])
        .stderr(Stdio::null())
        .status();
    let names = output(crate::system::command("ip").args(["netns", "list"])).unwrap_or_default();
    for name in names
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(NETNS_PREFIX))
    {
        let _ = crate::system::command("ip")
            .args(["netns", "delete", name])
            .stderr(Stdio::null())
            .status();
    }
    let _ = crate::system::command("ip")
        .args(["link", "delete", BRIDGE])
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_translation_sends_the_gateway_ports_and_the_metadata_address_to_loopback() {
        let script = nft_script(
            &[
                Forward {
                    port: 5432,
                    to: (Ipv4Addr::new(127, 0, 0, 2), 5432),
                },
                Forward {
                    port: 443,
                    to: (Ipv4Addr::new(127, 0, 0, 3), 443),
                },
            ],
            40123,
        );
        assert!(script.contains(
            "iifname \"anbgd0\" ip daddr 169.254.169.254 tcp dport 80 dnat to 127.0.0.1:40123"
        ));
        assert!(script.contains(
            "iifname \"anbgd0\" ip daddr 10.231.0.1 tcp dport 5432 dnat to 127.0.0.2:5432"
        ));
        assert!(script.contains(
            "iifname \"anbgd0\" ip daddr 10.231.0.1 tcp dport 443 dnat to 127.0.0.3:443"
        ));
        assert!(script.contains("ip saddr 10.231.0.0/24 oifname != \"anbgd0\" masquerade"));
        assert_eq!(instance_address(0), Ipv4Addr::new(10, 231, 0, 10));
    }
}
