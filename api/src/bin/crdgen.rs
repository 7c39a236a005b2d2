//! `crdgen`: writes every CRD to `crds/<name>.yaml` (or to stdout with `-`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "crds".into());
    for crd in tether_api::crds() {
        let yaml = tether_api::crd_yaml(&crd)?;
        if out == "-" {
            println!("---\n{yaml}");
        } else {
            let path = PathBuf::from(&out).join(tether_api::crd_file_name(&crd));
            std::fs::create_dir_all(&out)?;
            std::fs::write(&path, yaml)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
