//! `crdgen`: writes every CRD to `crds/<name>.yaml` and the chart's copy
//! `charts/tether/files/crds/<name>.yaml` (or to one directory given as the argument, or to
//! stdout with `-`).

use std::path::PathBuf;

/// Where the CRDs go by default: the repository's `crds/` and the chart's templated copy
/// (Helm templates can only read files inside the chart).
const DEFAULT_DIRS: [&str; 2] = ["crds", "charts/tether/files/crds"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dirs: Vec<String> = match std::env::args().nth(1) {
        Some(dir) => vec![dir],
        None => DEFAULT_DIRS.iter().map(|d| (*d).to_owned()).collect(),
    };
    for crd in tether_api::crds() {
        let yaml = tether_api::crd_yaml(&crd)?;
        for out in &dirs {
            if out == "-" {
                println!("---\n{yaml}");
            } else {
                let path = PathBuf::from(out).join(tether_api::crd_file_name(&crd));
                std::fs::create_dir_all(out)?;
                std::fs::write(&path, &yaml)?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
