//! The deploy files (deploy/compose, deploy/kubernetes, deploy/systemd) are what operators run,
//! so they are checked like code: every config they name is loaded by the component's own loader
//! with exactly the environment the compose service, pod or unit gives it; every EDUBRAIN_*
//! variable they set is one the component reads; ports, probes, mounts and secrets line up; the
//! compose secrets script runs and a real Mosquitto accepts the logins it made; systemd units
//! pass `systemd-analyze verify`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edubrain_e2e::workspace_binary;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// YAML (merge keys applied) as JSON values, one per document.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v: serde_norway::Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v.apply_merge().unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// Which component reads a config, and how (with the given environment); returns the
/// listening ports the config sets and the EDUBRAIN_* variables the loader asked for.
struct Loaded {
    ports: BTreeSet<u16>,
    asked: BTreeSet<String>,
    /// Directories the component writes.
    state: Vec<PathBuf>,
}

fn port_of(listen: &str) -> u16 {
    listen.rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("{listen:?} has no port"))
}

fn load(binary: &str, argv: &[String], config: &Path, env: &BTreeMap<String, String>) -> Loaded {
    let asked = RefCell::new(BTreeSet::new());
    let get = |k: &str| {
        asked.borrow_mut().insert(k.to_string());
        env.get(k).cloned()
    };
    let what = format!("{binary} {argv:?} with {}", config.display());
    let (ports, state) = match binary {
        "edubrain-edge" => {
            assert_eq!(argv, ["--config".to_string(), argv[1].clone()], "{what}");
            let c = edubrain_edge::EdgeConfig::load_with_env(config, get).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(c.mqtt.password.as_deref().is_some_and(|p| !p.is_empty()), "{what}: no MQTT password");
            assert_eq!(c.mqtt.username.as_deref(), Some(format!("edge-{}", c.city).as_str()), "{what}: login is not the city's edge");
            (BTreeSet::from([port_of(&c.http_listen)]), vec![c.wal.dir.clone().expect("a WAL dir")])
        }
        "edubrain-cloud" => {
            assert_eq!(argv[..2], ["serve".to_string(), "--config".to_string()], "{what}");
            let c = edubrain_cloud::CloudConfig::load_with_env(config, get).unwrap_or_else(|e| panic!("{what}: {e}"));
            edubrain_cloud::access::AccessControl::new(&c.access).unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut ports = BTreeSet::from([port_of(&c.http_listen)]);
            ports.extend(c.flight_sql.listen.as_deref().map(port_of));
            let audit = c.audit.dir.clone().unwrap_or_else(|| c.warehouse_dir.join("audit"));
            (ports, vec![c.warehouse_dir.clone(), audit])
        }
        "edubrain-agent" => {
            assert_eq!(argv[..2], ["serve".to_string(), "--config".to_string()], "{what}");
            let c = edubrain_agent::terminal::TerminalConfig::load_with_env(config, get).unwrap_or_else(|e| panic!("{what}: {e}"));
            (BTreeSet::from([port_of(&c.listen)]), vec![c.state_dir.clone()])
        }
        other => panic!("{other} is not an edubrain binary ({what})"),
    };
    let asked = asked.into_inner();
    for k in env.keys().filter(|k| k.starts_with("EDUBRAIN_")) {
        assert!(asked.contains(k), "{what}: sets {k}, which the component never reads (it reads {asked:?})");
    }
    Loaded { ports, asked, state }
}

/// Runs deploy/compose/make-secrets into `dir` with the built agent.
fn make_secrets(dir: &Path) {
    let out = Command::new(repo().join("deploy/compose/make-secrets"))
        .arg(dir)
        .env("EDUBRAIN_AGENT", workspace_binary("edubrain-agent"))
        .output()
        .unwrap();
    assert!(out.status.success(), "make-secrets: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn compose_services_load_their_configs_with_their_environment_and_secrets() {
    let compose_dir = repo().join("deploy/compose");
    let compose = yaml_docs(&compose_dir.join("compose.yaml")).remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    make_secrets(&secrets);
    // Host paths: ./secrets/ is what make-secrets writes (git-ignored); the rest is the repo.
    let host = |src: &str| -> PathBuf {
        match src.strip_prefix("./secrets/") {
            Some(rest) => secrets.join(rest),
            None => compose_dir.join(src),
        }
    };
    let declared_secrets = compose["secrets"].as_object().unwrap();
    for (name, s) in declared_secrets {
        assert!(host(s["file"].as_str().unwrap()).is_file(), "secret {name}: make-secrets does not write {}", s["file"]);
    }
    let services = compose["services"].as_object().unwrap();
    let mut ours = 0;
    let mut targets = BTreeMap::new();
    for (name, service) in services {
        // Every bind mount's source exists (named volumes are declared).
        let mut mounts = BTreeMap::new();
        for v in strs(&service["volumes"]) {
            let parts: Vec<&str> = v.split(':').collect();
            if parts[0].starts_with('.') {
                assert!(host(parts[0]).exists(), "{name}: mount source {} does not exist", parts[0]);
                mounts.insert(parts[1].to_string(), host(parts[0]));
            } else {
                assert!(compose["volumes"].get(parts[0]).is_some(), "{name}: volume {} is not declared", parts[0]);
            }
        }
        if !service["image"].as_str().unwrap().starts_with("edubrain:") {
            continue;
        }
        ours += 1;
        let command = strs(&service["command"]);
        let config_at = command.iter().position(|a| a == "--config").map(|i| &command[i + 1]).unwrap();
        let config = mounts.get(config_at.as_str()).unwrap_or_else(|| panic!("{name}: {config_at} is not mounted"));
        // The service's secrets appear under /run/secrets/<name>.
        let mut env: BTreeMap<String, String> = service["environment"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
            .unwrap_or_default();
        for s in strs(&service["secrets"]) {
            assert!(declared_secrets.contains_key(&s), "{name}: secret {s} is not declared");
        }
        for v in env.values_mut() {
            if let Some(secret) = v.strip_prefix("/run/secrets/") {
                assert!(strs(&service["secrets"]).contains(&secret.to_string()), "{name}: {v} is not one of its secrets");
                *v = host(declared_secrets[secret]["file"].as_str().unwrap()).display().to_string();
            }
        }
        let loaded = load(&command[0], &command[1..], config, &env);
        let published: BTreeSet<u16> = strs(&service["ports"]).iter().map(|p| p.rsplit(':').next().unwrap().parse().unwrap()).collect();
        assert_eq!(published, loaded.ports, "{name}: published ports are not the ones it listens on");
        assert!(loaded.asked.len() > 3);
        if name.starts_with("edge-") {
            targets.entry("edubrain-edge").or_insert_with(BTreeSet::new).insert(format!("{name}:{}", loaded.ports.first().unwrap()));
            // The password the edge reads is the one Mosquitto's file was made from.
            let edge = edubrain_edge::EdgeConfig::load_with_env(config, |k| env.get(k).cloned()).unwrap();
            let secret = read(&secrets.join("provisioning-secret"));
            let user = edge.mqtt.username.clone().unwrap();
            assert_eq!(
                edge.mqtt.password.as_deref(),
                Some(edubrain_schemas::identity::derived_password(secret.as_bytes(), &user).as_str())
            );
        } else {
            let http = port_of(&env["EDUBRAIN_CLOUD_HTTP_LISTEN"]);
            targets.entry("edubrain-cloud").or_insert_with(BTreeSet::new).insert(format!("{name}:{http}"));
        }
        // What it writes is on one of its named volumes.
        let named: Vec<String> =
            strs(&service["volumes"]).iter().filter(|v| !v.starts_with('.')).map(|v| v.split(':').nth(1).unwrap().to_string()).collect();
        for dir in &loaded.state {
            assert!(named.iter().any(|m| dir.starts_with(m)), "{name}: {} is not on a volume ({named:?})", dir.display());
        }
    }
    assert_eq!(ours, 3, "edge-c01, edge-c02 and cloud");

    // Compose's Prometheus scrapes exactly those services, with the jobs and rules of
    // deploy/prometheus/prometheus.yml.
    let main = yaml_docs(&repo().join("deploy/prometheus/prometheus.yml")).remove(0);
    let ours = yaml_docs(&compose_dir.join("prometheus.yml")).remove(0);
    assert_eq!(main["global"], ours["global"]);
    assert_eq!(main["rule_files"], ours["rule_files"]);
    let jobs = |v: &Value| -> BTreeMap<String, BTreeSet<String>> {
        v["scrape_configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                let t = j["static_configs"].as_array().unwrap().iter().flat_map(|s| strs(&s["targets"])).collect();
                (j["job_name"].as_str().unwrap().to_string(), t)
            })
            .collect()
    };
    let compose_jobs = jobs(&ours);
    assert_eq!(jobs(&main).keys().collect::<Vec<_>>(), compose_jobs.keys().collect::<Vec<_>>());
    for (job, wanted) in targets {
        assert_eq!(compose_jobs[job], wanted, "compose prometheus.yml targets of {job}");
    }
}

/// make-secrets' logins work on a real Mosquitto started with the config compose mounts (its
/// container paths moved to a temp dir): the edge logs in with its password file; a wrong
/// password does not.
#[test]
fn compose_mosquitto_accepts_the_logins_make_secrets_wrote() {
    let compose_dir = repo().join("deploy/compose");
    let compose = yaml_docs(&compose_dir.join("compose.yaml")).remove(0);
    let mounts: BTreeMap<String, String> = strs(&compose["services"]["mosquitto"]["volumes"])
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            (parts[1].to_string(), parts[0].to_string())
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    make_secrets(&secrets);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let host = |container: &str| -> String {
        let src = &mounts[container];
        match src.strip_prefix("./secrets/") {
            Some(rest) => secrets.join(rest).display().to_string(),
            None => compose_dir.join(src).display().to_string(),
        }
    };
    let port = edubrain_brokers::free_port();
    let conf = read(Path::new(&host("/mosquitto/config/mosquitto.conf")))
        .replace("listener 1883", &format!("listener {port} 127.0.0.1\nuser root"))
        .replace("/mosquitto/data/", &format!("{}/", data.display()))
        .replace("/mosquitto/secrets/mosquitto-passwd", &host("/mosquitto/secrets/mosquitto-passwd"))
        .replace("/mosquitto/config/acl", &host("/mosquitto/config/acl"));
    assert!(!conf.contains(" /mosquitto/"), "a container path is not mounted: {conf}");
    let conf_path = tmp.path().join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = std::fs::File::create(tmp.path().join("mosquitto.log")).unwrap();
    let mut broker = Command::new("mosquitto").arg("-c").arg(&conf_path).stderr(log).spawn().unwrap();
    let password = read(&secrets.join("edge-c01-mqtt-password"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "mosquitto is not listening: {}", read(&tmp.path().join("mosquitto.log")));
        std::thread::sleep(Duration::from_millis(50));
    }
    let connect = |password: &str| {
        let mut options = rumqttc::MqttOptions::new("edge-c01", "127.0.0.1", port);
        options.set_credentials("edge-c01", password);
        rt.block_on(edubrain_e2e::connack(options))
    };
    let good = connect(&password);
    let bad = connect("not-the-password");
    let _ = broker.kill();
    let _ = broker.wait();
    let log = read(&tmp.path().join("mosquitto.log"));
    assert!(!log.contains("listen socket on port 1883"), "a default listener opened: {log}");
    assert_eq!(good, Ok(rumqttc::ConnectReturnCode::Success), "{log}");
    assert!(bad.as_ref().is_err_and(|e| e.contains("NotAuthorized") || e.contains("BadUserNamePassword")), "{bad:?}");
}

#[test]
fn kubernetes_pods_load_their_configs_and_line_up() {
    let k8s = repo().join("deploy/kubernetes");
    let kustomization = yaml_docs(&k8s.join("kustomization.yaml")).remove(0);
    let generated: BTreeMap<String, PathBuf> = kustomization["configMapGenerator"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let path = k8s.join(f.as_str().unwrap());
            assert!(path.is_file(), "{} missing", path.display());
            (path.file_name().unwrap().to_str().unwrap().to_string(), path)
        })
        .collect();
    let docs: Vec<Value> = strs(&kustomization["resources"]).iter().flat_map(|r| yaml_docs(&k8s.join(r))).collect();
    // The keys of the edubrain-mqtt Secret: what make-secrets writes.
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets");
    make_secrets(&secrets);
    let secret_keys: BTreeSet<String> =
        std::fs::read_dir(&secrets).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();

    let mut edges = BTreeSet::new();
    for doc in docs.iter().filter(|d| d["kind"] == "StatefulSet") {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let pod = &doc["spec"]["template"]["spec"];
        let selector = doc["spec"]["selector"]["matchLabels"].as_object().unwrap();
        assert!(
            selector.iter().all(|(k, v)| doc["spec"]["template"]["metadata"]["labels"][k] == *v),
            "{name}: selector does not match its pods"
        );
        let volumes: BTreeMap<&str, &Value> = pod["volumes"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
        let claims: BTreeSet<&str> =
            doc["spec"]["volumeClaimTemplates"].as_array().unwrap().iter().map(|c| c["metadata"]["name"].as_str().unwrap()).collect();
        for c in pod["containers"].as_array().unwrap() {
            let ports: BTreeMap<&str, u16> = c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_u64().unwrap() as u16))
                .collect();
            for probe in ["readinessProbe", "livenessProbe"] {
                if let Some(port) = c[probe]["httpGet"]["port"].as_str().or(c[probe]["tcpSocket"]["port"].as_str()) {
                    assert!(ports.contains_key(port), "{name}: {probe} uses unknown port {port}");
                }
                if let Some(path) = c[probe]["httpGet"]["path"].as_str() {
                    assert_eq!(path, "/healthz", "{name}");
                }
            }
            // Mounts: configMap keys are generated files; secret items are Secret keys; claims exist.
            let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
            for m in c["volumeMounts"].as_array().unwrap() {
                let (vol, at) = (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap());
                if claims.contains(vol) {
                    continue;
                }
                let v = volumes.get(vol).unwrap_or_else(|| panic!("{name}: mount of unknown volume {vol}"));
                if v["configMap"]["name"] == "edubrain-config" {
                    let key = m["subPath"].as_str().unwrap();
                    files.insert(at.to_string(), generated.get(key).unwrap_or_else(|| panic!("{name}: {key} not generated")).clone());
                } else if let Some(items) = v["secret"]["items"].as_array() {
                    assert_eq!(v["secret"]["secretName"], "edubrain-mqtt");
                    for item in items {
                        let key = item["key"].as_str().unwrap();
                        assert!(secret_keys.contains(key), "{name}: Secret key {key} is not one make-secrets writes ({secret_keys:?})");
                        files.insert(format!("{at}/{}", item["path"].as_str().unwrap()), secrets.join(key));
                    }
                }
            }
            let image = c["image"].as_str().unwrap();
            if !image.starts_with("edubrain:") {
                continue;
            }
            let args = strs(&c["args"]);
            let config_at = args.iter().position(|a| a == "--config").map(|i| args[i + 1].clone()).unwrap();
            let mut env: BTreeMap<String, String> = c["env"]
                .as_array()
                .map(|a| a.iter().map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string())).collect())
                .unwrap_or_default();
            for v in env.values_mut() {
                if let Some(host) = files.get(v.as_str()) {
                    *v = host.display().to_string();
                }
            }
            let loaded = load(&args[0], &args[1..], &files[&config_at], &env);
            assert_eq!(loaded.ports, ports.values().copied().collect(), "{name}: container ports are not the ones it listens on");
            // State lives on the claim.
            let claim_mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| claims.contains(m["name"].as_str().unwrap())).unwrap();
            for dir in loaded.state {
                assert!(dir.starts_with(claim_mount["mountPath"].as_str().unwrap()), "{name}: {} is not on its volume", dir.display());
            }
            if args[0] == "edubrain-edge" {
                edges.insert(env["EDUBRAIN_EDGE_CITY"].clone());
            }
        }
    }
    assert_eq!(edges, BTreeSet::from(["c01".to_string(), "c02".to_string()]));
    // Every Service selects a StatefulSet's pods and targets a named container port.
    for svc in docs.iter().filter(|d| d["kind"] == "Service") {
        let selector = svc["spec"]["selector"].as_object().unwrap();
        let set = docs
            .iter()
            .filter(|d| d["kind"] == "StatefulSet")
            .find(|d| selector.iter().all(|(k, v)| d["spec"]["template"]["metadata"]["labels"][k] == *v))
            .unwrap_or_else(|| panic!("Service {} selects no pods", svc["metadata"]["name"]));
        let names: Vec<&str> = set["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()))
            .collect();
        for p in svc["spec"]["ports"].as_array().unwrap() {
            assert!(names.contains(&p["targetPort"].as_str().unwrap()), "Service {}: {p}", svc["metadata"]["name"]);
        }
    }
    // Mosquitto's settings and ACL are deploy/mosquitto's (those the tests' brokers run with).
    let directives = |text: &str| -> BTreeSet<String> {
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
    };
    let k8s_conf = directives(&read(&generated["mosquitto.conf"]));
    for d in directives(&read(&repo().join("deploy/mosquitto/edubrain.conf"))) {
        assert!(k8s_conf.contains(&d), "deploy/kubernetes/config/mosquitto.conf lacks {d:?}");
    }
    assert_eq!(directives(&read(&generated["acl"])), directives(&read(&repo().join("deploy/mosquitto/acl"))));
}

/// Parses a unit's `key=value` lines of `[Service]`, with `%i` as `instance`.
fn unit_service(text: &str, instance: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[Service]" && !line.starts_with('#') && !line.is_empty() {
            let (k, v) = line.split_once('=').unwrap();
            out.push((k.to_string(), v.replace("%i", instance)));
        }
    }
    out
}

#[test]
fn systemd_units_load_their_configs_and_pass_systemd_analyze() {
    let dir = repo().join("deploy/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let credentials = tmp.path().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let mut units = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = read(&path);
        let service = unit_service(&text, "c01");
        let get = |k: &str| service.iter().filter(|(key, _)| key == k).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        let exec: Vec<String> = get("ExecStart")[0].split_whitespace().map(String::from).collect();
        let binary = exec[0].strip_prefix("/usr/local/bin/").unwrap_or_else(|| panic!("{file}: {}", exec[0]));
        // /etc/edubrain/<name> is the deploy/ example of that name.
        let config_at = exec.iter().position(|a| a == "--config").map(|i| exec[i + 1].clone()).unwrap();
        let config = repo().join("deploy").join(config_at.strip_prefix("/etc/edubrain/").unwrap());
        // Credentials: LoadCredential=name:/etc/… is $CREDENTIALS_DIRECTORY/name (%d).
        for c in get("LoadCredential") {
            let (name, _) = c.split_once(':').unwrap();
            std::fs::write(credentials.join(name), format!("credential {name}\n")).unwrap();
        }
        let env: BTreeMap<String, String> = get("Environment")
            .iter()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap();
                (k.to_string(), v.replace("%d", &credentials.display().to_string()))
            })
            .collect();
        for v in env.values().filter(|v| v.starts_with(credentials.to_str().unwrap())) {
            assert!(Path::new(v).is_file(), "{file}: {v} is not a LoadCredential");
        }
        let loaded = load(binary, &exec[1..], &config, &env);
        let state: Vec<PathBuf> = get("StateDirectory")
            .iter()
            .flat_map(|s| s.split_whitespace().map(|d| Path::new("/var/lib").join(d)).collect::<Vec<_>>())
            .collect();
        for d in &loaded.state {
            assert!(state.iter().any(|s| d.starts_with(s)), "{file}: writes {} outside its StateDirectory {state:?}", d.display());
        }
        // systemd's own check, with ExecStart pointing at the binary this workspace built.
        let check = tmp.path().join(&file);
        std::fs::write(&check, text.replace(&exec[0], &workspace_binary(binary).display().to_string())).unwrap();
        let target = if file.ends_with("@.service") { tmp.path().join(file.replace("@.service", "@c01.service")) } else { check.clone() };
        if target != check {
            std::fs::copy(&check, &target).unwrap();
        }
        let out =
            Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&target).output().expect("systemd-analyze (Debian's systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> =
            stderr.lines().filter(|l| l.contains(&file) || l.contains(target.file_name().unwrap().to_str().unwrap())).collect();
        assert!(out.status.success() && complaints.is_empty(), "{file}: systemd-analyze verify: {stderr}");
        units += 1;
    }
    assert_eq!(units, 3);
}

/// The commented `[kafka.tls]`/`[kafka.sasl]` block of each example config, uncommented with
/// the files it names created, loads through the component's loader (which reads every file
/// the block names) and asks librdkafka for `sasl_ssl` with the block's login.
#[test]
fn kafka_security_examples_load_when_uncommented() {
    use edubrain_process::kafka_security::client_properties;
    let tmp = tempfile::tempdir().unwrap();
    for (file, user) in [("edge-c01.toml", "edge-c01"), ("edge-c02.toml", "edge-c02"), ("cloud.toml", "edubrain-cloud")] {
        let text = read(&repo().join("deploy").join(file));
        let mut uncommented = 0;
        let mut in_block = false;
        let mut lines = Vec::new();
        for line in text.lines() {
            in_block |= line == "# [kafka.tls]";
            if in_block && let Some(rest) = line.strip_prefix('#') {
                lines.push(rest.trim_start().to_string());
                uncommented += 1;
                in_block = !rest.trim_start().starts_with("password_file");
            } else {
                lines.push(line.to_string());
            }
        }
        assert_eq!(uncommented, 9, "{file}: the Kafka security block changed shape");
        let root = tmp.path().join(file);
        let text = lines
            .join("\n")
            .replace("/etc/edubrain/", &format!("{}/etc/", root.display()))
            .replace("/run/secrets/", &format!("{}/secrets/", root.display()));
        for dir in ["etc", "secrets"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(root.join("etc/kafka-ca.pem"), cert).unwrap();
        std::fs::write(root.join(format!("etc/{user}-kafka.pem")), cert).unwrap();
        std::fs::write(root.join(format!("etc/{user}-kafka.key")), "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
            .unwrap();
        std::fs::write(root.join("secrets/kafka-password"), "p\n").unwrap();
        let config = root.join("config.toml");
        std::fs::write(&config, text).unwrap();
        let (tls, sasl) = if file.starts_with("edge") {
            let c = edubrain_edge::EdgeConfig::load_with_env(&config, |_| None).unwrap_or_else(|e| panic!("{file}: {e}"));
            (c.kafka.tls, c.kafka.sasl)
        } else {
            let c = edubrain_cloud::CloudConfig::load_with_env(&config, |_| None).unwrap_or_else(|e| panic!("{file}: {e}"));
            (c.kafka.tls, c.kafka.sasl)
        };
        let properties = client_properties(tls.as_ref(), sasl.as_ref()).unwrap();
        let get = |k: &str| properties.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str());
        assert_eq!((get("security.protocol"), get("sasl.username")), (Some("sasl_ssl"), Some(user)), "{file}");
    }
}
