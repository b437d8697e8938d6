//! `portcullis inject` against golden files: each `tests/golden/inject/
//! NAME.in.yaml` (with the options `NAME.args`, if any) must give exactly
//! `NAME.out.yaml`; injecting the output again changes nothing; reading the
//! output gives the same documents as writing them. Run with
//! PORTCULLIS_UPDATE_GOLDEN=1 to rewrite the outputs after a deliberate
//! change (and review the diff).

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/inject");

fn inject(input: &Path, args: &[String]) -> String {
    let o = Command::new(BIN)
        .arg("inject")
        .arg(input)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn inject_matches_the_golden_files_and_is_idempotent() {
    let update = std::env::var("PORTCULLIS_UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut cases = 0;
    for entry in std::fs::read_dir(DIR).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".in.yaml"))
        else {
            continue;
        };
        cases += 1;
        let args: Vec<String> =
            std::fs::read_to_string(Path::new(DIR).join(format!("{name}.args")))
                .map(|a| a.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default();
        let out = inject(&path, &args);
        let golden = Path::new(DIR).join(format!("{name}.out.yaml"));
        if update {
            std::fs::write(&golden, &out).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(out, want, "{name}: differs from {}", golden.display());

        // Injected again: nothing changes.
        let again = std::env::temp_dir().join(format!(
            "portcullis-inject-{name}-{}.yaml",
            std::process::id()
        ));
        std::fs::write(&again, &out).unwrap();
        assert_eq!(
            inject(&again, &args),
            out,
            "{name}: a second inject changed it"
        );
        let _ = std::fs::remove_file(&again);
    }
    assert!(cases >= 2, "only {cases} golden cases");
}

/// The operator kit's injected example is what inject makes of the plain one.
#[test]
fn the_kubernetes_example_is_injected_as_shown() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let args: Vec<String> = [
        "--config-map",
        "orders-portcullis",
        "--identity",
        "secret:orders-svid",
    ]
    .map(String::from)
    .to_vec();
    let out = inject(&dir.join("orders-app.yaml"), &args);
    let shown = dir.join("orders-injected.yaml");
    if std::env::var("PORTCULLIS_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&shown, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(&shown).unwrap_or_default());
    assert!(
        out.contains("port: 15021") && out.contains("portcullis.io/probes: /healthz -> 8080"),
        "{out}"
    );
}

#[test]
fn inject_reads_stdin_and_refuses_bad_yaml_with_the_place() {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["inject", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: x}]\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && out.contains("portcullis-init")
            && out.contains("portcullis.io/inject: injected"),
        "{out}"
    );

    let bad =
        std::env::temp_dir().join(format!("portcullis-inject-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "kind: Pod\nspec: [unclosed\n").unwrap();
    let o = Command::new(BIN).arg("inject").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    let _ = std::fs::remove_file(&bad);
}
