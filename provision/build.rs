//! Rebuilds provision when a boot script it embeds (`include_str!` of `../userdata/*.sh`)
//! changes in this clone. Those files are outside the package, so rustc's dependency info
//! names them by absolute path, and clones sharing a target directory (as CI's do here)
//! would otherwise take another clone's scripts as current.

fn main() {
    for script in ["common.sh", "web.sh", "worker.sh"] {
        println!("cargo:rerun-if-changed=../userdata/{script}");
    }
}
