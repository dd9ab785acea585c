//! The hook's gRPC services called with a real tonic client over a temporary Unix socket,
//! registering against a real `sockbypassd --control`: Info, OnDefineDomain (v1alpha2 and
//! v1alpha3), PreCloudInitIso and Shutdown; the returned XML is checked structurally.

mod support;

use std::path::Path;
use std::time::Duration;

use sockbypass_ctl::{Answer, Client, Request, VmInfo};
use sockbypass_kubevirt_hook::config::Settings;
use sockbypass_kubevirt_hook::domain::QEMU_NS;
use sockbypass_kubevirt_hook::proto::info::info_client::InfoClient;
use sockbypass_kubevirt_hook::proto::info::InfoParams;
use sockbypass_kubevirt_hook::proto::{v1alpha2, v1alpha3};
use support::{Daemon, Server, DOMAIN, VMI};
use tonic::Code;

type V2 = v1alpha2::callbacks_client::CallbacksClient<tonic::transport::Channel>;
type V3 = v1alpha3::callbacks_client::CallbacksClient<tonic::transport::Channel>;

fn vm_get(control: &Path, name: &str) -> VmInfo {
    let answer = Client::connect(control)
        .expect("control connect")
        .call(&Request::VmGet { name: name.into() })
        .expect("vm_get");
    match answer {
        Answer::Vm(info) => info,
        other => panic!("vm_get answered {other:?}"),
    }
}

fn vm_list(control: &Path) -> Vec<VmInfo> {
    let answer = Client::connect(control)
        .expect("control connect")
        .call(&Request::VmList {})
        .expect("vm_list");
    match answer {
        Answer::Vms(vms) => vms,
        other => panic!("vm_list answered {other:?}"),
    }
}

/// The `<qemu:arg>` values of the returned domain, checking the memory backing on the way.
fn check_attached(xml: &str, socket: &Path) {
    let doc = roxmltree::Document::parse(xml).expect("returned domain is XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "domain");
    let backing = root
        .children()
        .find(|c| c.tag_name().name() == "memoryBacking")
        .expect("memoryBacking");
    let attr = |name: &str, key: &str| {
        backing
            .children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.attribute(key))
            .map(str::to_owned)
    };
    assert_eq!(attr("source", "type").as_deref(), Some("memfd"));
    assert_eq!(attr("access", "mode").as_deref(), Some("shared"));
    let args: Vec<&str> = root
        .descendants()
        .filter(|n| n.tag_name().namespace() == Some(QEMU_NS) && n.tag_name().name() == "arg")
        .filter_map(|n| n.attribute("value"))
        .collect();
    assert_eq!(
        args,
        [
            "-chardev",
            &format!("socket,id=sockbypass0,path={}", socket.display()),
            "-device",
            "vhost-user-vsock-pci,chardev=sockbypass0",
        ]
    );
}

fn vmi_named(name: &str, extra_annotations: &str) -> String {
    VMI.replace("\"name\": \"vmi-x\"", &format!("\"name\": \"{name}\""))
        .replace("\"db,web\"", &format!("\"db,web\"{extra_annotations}"))
}

async fn define_v2(v2: &mut V2, domain: &str, vmi: &str) -> Result<String, tonic::Status> {
    let reply = v2
        .on_define_domain(v1alpha2::OnDefineDomainParams {
            domain_xml: domain.as_bytes().to_vec(),
            vmi: vmi.as_bytes().to_vec(),
        })
        .await?;
    Ok(String::from_utf8(reply.into_inner().domain_xml).expect("UTF-8"))
}

async fn define_v3(v3: &mut V3, domain: &str, vmi: &str) -> Result<String, tonic::Status> {
    let reply = v3
        .on_define_domain(v1alpha3::OnDefineDomainParams {
            domain_xml: domain.as_bytes().to_vec(),
            vmi: vmi.as_bytes().to_vec(),
        })
        .await?;
    Ok(String::from_utf8(reply.into_inner().domain_xml).expect("UTF-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_announces_on_define_domain_and_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = Settings::new(dir.path().join("control.sock"), dir.path());
    settings.priority = 7;
    let server = Server::start(dir.path(), settings);
    let info = InfoClient::new(server.channel().await)
        .info(InfoParams {})
        .await
        .expect("Info")
        .into_inner();
    assert_eq!(info.name, "sockbypass");
    assert_eq!(info.versions, ["v1alpha2", "v1alpha3"]);
    let points: Vec<(&str, i32)> = info
        .hook_points
        .iter()
        .map(|p| (p.name.as_str(), p.priority))
        .collect();
    // Shutdown is announced too: virt-launcher calls it only on sidecars that do.
    assert_eq!(points, [("OnDefineDomain", 7), ("Shutdown", 0)]);

    // v1alpha2 alone has no Shutdown.
    let mut settings = Settings::new(dir.path().join("control.sock"), dir.path());
    settings.versions = vec!["v1alpha2".into()];
    let other = tempfile::tempdir().expect("tempdir");
    let server = Server::start(other.path(), settings);
    let info = InfoClient::new(server.channel().await)
        .info(InfoParams {})
        .await
        .expect("Info")
        .into_inner();
    assert_eq!(info.versions, ["v1alpha2"]);
    let points: Vec<&str> = info.hook_points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(points, ["OnDefineDomain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_cloud_init_iso_passes_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), Settings::new(dir.path().join("c"), dir.path()));
    let channel = server.channel().await;
    let source = br##"{"userData":"#cloud-config\n"}"##.to_vec();
    let data = br#"{"noCloudMetaData":{"instanceId":"x"}}"#.to_vec();
    let v2 = V2::new(channel.clone())
        .pre_cloud_init_iso(v1alpha2::PreCloudInitIsoParams {
            cloud_init_no_cloud_source: source.clone(),
            vmi: VMI.as_bytes().to_vec(),
            cloud_init_data: data.clone(),
        })
        .await
        .expect("v1alpha2 PreCloudInitIso")
        .into_inner();
    assert_eq!(
        (v2.cloud_init_no_cloud_source, v2.cloud_init_data),
        (source.clone(), data.clone())
    );
    let v3 = V3::new(channel)
        .pre_cloud_init_iso(v1alpha3::PreCloudInitIsoParams {
            cloud_init_no_cloud_source: source.clone(),
            vmi: VMI.as_bytes().to_vec(),
            cloud_init_data: data.clone(),
        })
        .await
        .expect("v1alpha3 PreCloudInitIso")
        .into_inner();
    assert_eq!(
        (v3.cloud_init_no_cloud_source, v3.cloud_init_data),
        (source, data)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), Settings::new(dir.path().join("c"), dir.path()));
    let channel = server.channel().await;
    V3::new(channel.clone())
        .shutdown(v1alpha3::ShutdownParams {})
        .await
        .expect("Shutdown answered");
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the server ends within 10 s of Shutdown, with the client still connected");
    ended.expect("server task").expect("server ended cleanly");
    // Nobody listens any more.
    assert!(tokio::net::UnixStream::connect(&server.socket)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_define_domain_registers_with_the_real_daemon_idempotently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let sockets = dir.path().join("vms");
    std::fs::create_dir(&sockets).expect("socket dir");
    let mut server = Server::start(dir.path(), Settings::new(&daemon.control, &sockets));
    let channel = server.channel().await;
    let socket = sockets.join("default.vmi-x.sock");

    // v1alpha2: the daemon allocates a CID and serves the socket.
    let first = define_v2(&mut V2::new(channel.clone()), DOMAIN, VMI)
        .await
        .expect("OnDefineDomain v1alpha2");
    check_attached(&first, &socket);
    let vm = vm_get(&daemon.control, "default.vmi-x");
    assert_eq!(vm.socket, socket);
    assert_eq!(vm.groups, ["db", "web"]);
    assert_eq!(vm.ports, None);
    assert!(vm.cid >= 3, "allocated CID {}", vm.cid);
    assert!(
        socket.exists(),
        "the daemon listens on {}",
        socket.display()
    );

    // v1alpha3, again: the same XML, the same VM, still one VM.
    let second = define_v3(&mut V3::new(channel.clone()), DOMAIN, VMI)
        .await
        .expect("OnDefineDomain v1alpha3 (again)");
    assert_eq!(second, first);
    // Its own output again: unchanged.
    let third = define_v3(&mut V3::new(channel.clone()), &first, VMI)
        .await
        .expect("OnDefineDomain on its own output");
    assert_eq!(third, first);
    assert_eq!(vm_get(&daemon.control, "default.vmi-x"), vm);
    assert_eq!(vm_list(&daemon.control).len(), 1);

    // Shutdown (virt-launcher is done with the VM): the VM leaves the daemon, the server ends.
    V3::new(channel)
        .shutdown(v1alpha3::ShutdownParams {})
        .await
        .expect("Shutdown");
    assert_eq!(vm_list(&daemon.control), []);
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the server ends after Shutdown")
        .expect("server task")
        .expect("server ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path());
    let server = Server::start(dir.path(), Settings::new(&daemon.control, dir.path()));
    let mut v3 = V3::new(server.channel().await);

    // A CID asked for and given.
    let vmi_a = vmi_named(
        "vmi-x",
        ", \"sockbypass.io/cid\": \"7\", \"sockbypass.io/ports\": \"22,80\"",
    );
    define_v3(&mut v3, DOMAIN, &vmi_a)
        .await
        .expect("vmi-x with CID 7");
    let vm = vm_get(&daemon.control, "default.vmi-x");
    assert_eq!((vm.cid, vm.ports.clone()), (7, Some(vec![22, 80])));

    // Another VMI asking for the same CID.
    let vmi_b = vmi_named("vmi-y", ", \"sockbypass.io/cid\": \"7\"");
    let domain_b = DOMAIN.replace("default_vmi-x", "default_vmi-y");
    let status = define_v3(&mut v3, &domain_b, &vmi_b)
        .await
        .expect_err("CID 7 is taken");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains(
            "VM `default.vmi-y`: CID 7 (annotation sockbypass.io/cid) is taken on this node"
        ),
        "{}",
        status.message()
    );

    // The same VMI name with other settings.
    let changed = vmi_named("vmi-x", ", \"sockbypass.io/cid\": \"7\"");
    let status = define_v3(&mut v3, DOMAIN, &changed)
        .await
        .expect_err("ports differ");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("already registered with sockbypassd with other settings: ports"),
        "{}",
        status.message()
    );

    // autoattachVSOCK: refused before the daemon hears of the VM.
    let auto = vmi_named("vmi-z", "").replace(
        "\"interfaces\":",
        "\"autoattachVSOCK\": true, \"interfaces\":",
    );
    let domain_z = DOMAIN.replace("default_vmi-x", "default_vmi-z");
    let status = define_v3(&mut v3, &domain_z, &auto)
        .await
        .expect_err("autoattachVSOCK");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("autoattachVSOCK"),
        "{}",
        status.message()
    );
    let names: Vec<String> = vm_list(&daemon.control)
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["default.vmi-x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_the_error_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        Settings::new(dir.path().join("control.sock"), dir.path()),
    );
    let status = define_v2(&mut V2::new(server.channel().await), DOMAIN, VMI)
        .await
        .expect_err("no daemon");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("is sockbypassd running with --control?"),
        "{}",
        status.message()
    );
}
