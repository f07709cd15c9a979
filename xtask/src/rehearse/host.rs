//! What the rehearsal needs of this machine: one rehearsal at a time, a cache that outlives
//! the clone, free ports, and the refusal to run on an EC2 instance.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::paths::scratch_dir;

/// Held for the whole rehearsal: it uses what there is one of on a machine (port 80, the
/// metadata address, the firewall table, the machines' names, the cached root filesystem),
/// so a rehearsal from another clone waits for this one.
pub(super) fn machine_lock() -> anyhow::Result<std::fs::File> {
    let path = std::env::temp_dir().join("anb-rehearse.lock");
    let lock = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "rehearse: another rehearsal is running on this machine; waiting for it (lock {})",
            path.display()
        );
        lock.lock()?;
    }
    Ok(lock)
}

/// Where the root filesystem is kept between runs: in the cargo target directory when it
/// is shared by every clone on this machine (as CI's is), so a fresh clone finds it too;
/// otherwise under this clone's `target/`.
pub(super) fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|dir| PathBuf::from(dir).join("anb-rehearse"))
        .unwrap_or_else(|| scratch_dir().join("rehearse"))
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn wait_for_port(address: (&str, u16), limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nothing listens on {}:{} after {limit:?}",
                address.0,
                address.1
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// What marks the machine under `root` as an EC2 instance, if anything does: Nitro and Xen
/// instances name Amazon in their DMI vendor fields, and older Xen ones start their
/// hypervisor UUID with "ec2".
pub(super) fn ec2_host_sign(root: &Path) -> Option<String> {
    for field in [
        "sys/class/dmi/id/sys_vendor",
        "sys/class/dmi/id/board_vendor",
        "sys/class/dmi/id/bios_vendor",
    ] {
        let value = std::fs::read_to_string(root.join(field)).unwrap_or_default();
        if value.trim().starts_with("Amazon") {
            return Some(format!("/{field} says {:?}", value.trim()));
        }
    }
    let uuid = std::fs::read_to_string(root.join("sys/hypervisor/uuid")).unwrap_or_default();
    uuid.to_ascii_lowercase()
        .starts_with("ec2")
        .then(|| format!("/sys/hypervisor/uuid is {}", uuid.trim()))
}

#[cfg(test)]
mod tests {
    use super::ec2_host_sign;

    #[test]
    fn an_ec2_instance_is_recognised_by_its_dmi_vendor_or_hypervisor_uuid() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            ec2_host_sign(root.path()),
            None,
            "an empty root is no EC2 host"
        );
        let dmi = root.path().join("sys/class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(dmi.join("sys_vendor"), "QEMU\n").unwrap();
        assert_eq!(ec2_host_sign(root.path()), None);
        std::fs::write(dmi.join("board_vendor"), "Amazon EC2\n").unwrap();
        assert!(ec2_host_sign(root.path()).unwrap().contains("Amazon EC2"));

        let xen = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(xen.path().join("sys/hypervisor")).unwrap();
        std::fs::write(
            xen.path().join("sys/hypervisor/uuid"),
            "ec2e1916-9099-7caf-fd21-012345abcdef\n",
        )
        .unwrap();
        assert!(ec2_host_sign(xen.path()).unwrap().contains("ec2e1916"));
    }
}
