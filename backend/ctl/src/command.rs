//! Carrying out one `sockbypass` command: the request to the daemon, and what to print on
//! stdout and stderr, or the error to report.

use std::path::Path;

use serde::Serialize;

use crate::cli::{ChArgs, Cli, Command, DomainTypeArg, LibvirtXml, QemuArgs, VmCommand};
use crate::client::{Client, ClientError};
use crate::generate::cloud_hypervisor::{ch_args, ChOptions};
use crate::generate::libvirt::{domain_template, fragments, DomainOptions, DomainType};
use crate::generate::qemu::{qemu_args, QemuOptions};
use crate::generate::{shell, GenerateError};
use crate::protocol::{Answer, Request, VmInfo};
use crate::render;

/// What a command prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Printed {
    /// Its output.
    pub stdout: String,
    /// Notes for the person running it.
    pub stderr: String,
}

impl Printed {
    fn out(stdout: String) -> Printed {
        Printed {
            stdout,
            stderr: String::new(),
        }
    }
}

/// Why a command failed (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon could not be reached, or refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon's answer does not fit the request.
    #[error("the daemon answered `{request}` with a `{answer}` answer")]
    Unexpected {
        /// The request's `op`.
        request: &'static str,
        /// The answer's kind.
        answer: &'static str,
    },
    /// The VM's paths cannot be written for the VMM.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// An answer could not be written as JSON.
    #[error("cannot write the answer as JSON")]
    Json(#[source] serde_json::Error),
}

impl CliError {
    /// The one line to print after `sockbypass: `: the message and its causes, and for a
    /// refusal the error kind in parentheses.
    pub fn line(&self) -> String {
        if let CliError::Client(ClientError::Refused(e)) = self {
            let kind = serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            return format!("{} ({kind})", e.message);
        }
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            line.push_str(": ");
            line.push_str(&e.to_string());
            source = e.source();
        }
        line.replace('\n', " ")
    }
}

fn answer_kind(a: &Answer) -> &'static str {
    match a {
        Answer::Added(_) => "added",
        Answer::Removed(_) => "removed",
        Answer::Vms(_) => "vms",
        Answer::Vm(_) => "vm",
        Answer::Stats(_) => "stats",
        Answer::Reloaded(_) => "reloaded",
    }
}

fn json_line<T: Serialize + ?Sized>(value: &T) -> Result<String, CliError> {
    let mut s = serde_json::to_string(value).map_err(CliError::Json)?;
    s.push('\n');
    Ok(s)
}

/// Sends one request to the daemon at `control`.
fn call(control: &Path, request: &Request) -> Result<Answer, CliError> {
    let mut client = Client::connect(control)?;
    Ok(client.call(request)?)
}

/// The VM `name` as the daemon serves it.
fn vm_get(control: &Path, name: &str) -> Result<VmInfo, CliError> {
    match call(control, &Request::VmGet { name: name.into() })? {
        Answer::Vm(vm) => Ok(vm),
        other => Err(CliError::Unexpected {
            request: "vm_get",
            answer: answer_kind(&other),
        }),
    }
}

/// An argument list as the options ask: a JSON array, one per line, or one shell line.
fn print_args(args: &[String], json: bool, one_per_line: bool) -> Result<String, CliError> {
    if json {
        json_line(args)
    } else if one_per_line {
        Ok(shell::lines(args)?)
    } else {
        Ok(shell::join(args) + "\n")
    }
}

fn qemu(control: &Path, q: &QemuArgs) -> Result<Printed, CliError> {
    let vm = vm_get(control, &q.name)?;
    let args = qemu_args(&vm, &QemuOptions { memory: q.memory })?;
    Ok(Printed::out(print_args(&args, q.json, q.one_per_line)?))
}

fn cloud_hypervisor(control: &Path, c: &ChArgs) -> Result<Printed, CliError> {
    let vm = vm_get(control, &c.name)?;
    let out = ch_args(
        &vm,
        &ChOptions {
            memory: c.memory,
            device_type_key: c.device_type_key,
        },
    )?;
    Ok(Printed {
        stdout: print_args(&out.args, c.json, c.one_per_line)?,
        stderr: out.notes.iter().map(|n| format!("# {n}\n")).collect(),
    })
}

fn libvirt(control: &Path, l: &LibvirtXml) -> Result<Printed, CliError> {
    let vm = vm_get(control, &l.name)?;
    let xml = if l.domain_template {
        let domain_type = match l.domain_type {
            DomainTypeArg::Kvm => DomainType::Kvm,
            DomainTypeArg::Qemu => DomainType::Qemu,
        };
        domain_template(
            &vm,
            &DomainOptions {
                memory: l.memory,
                domain_type,
            },
        )?
    } else {
        fragments(&vm)?
    };
    Ok(Printed::out(xml))
}

fn vm(control: &Path, command: &VmCommand) -> Result<Printed, CliError> {
    let (request, json) = match command {
        VmCommand::Add { spec, json } => (Request::VmAdd { spec: spec.clone() }, *json),
        VmCommand::Remove { name, json } => (Request::VmRemove { name: name.clone() }, *json),
        VmCommand::List { json } => (Request::VmList {}, *json),
    };
    let text = match (call(control, &request)?, command) {
        (Answer::Added(vm), VmCommand::Add { .. }) if json => json_line(&vm)?,
        (Answer::Added(vm), VmCommand::Add { .. }) => render::vm_added(&vm),
        (Answer::Removed(name), VmCommand::Remove { .. }) if json => json_line(&name)?,
        (Answer::Removed(name), VmCommand::Remove { .. }) => format!("removed VM {name}\n"),
        (Answer::Vms(vms), VmCommand::List { .. }) if json => json_line(&vms)?,
        (Answer::Vms(vms), VmCommand::List { .. }) => render::vm_table(&vms),
        (other, _) => {
            return Err(CliError::Unexpected {
                request: match command {
                    VmCommand::Add { .. } => "vm_add",
                    VmCommand::Remove { .. } => "vm_remove",
                    VmCommand::List { .. } => "vm_list",
                },
                answer: answer_kind(&other),
            })
        }
    };
    Ok(Printed::out(text))
}

/// Carries out `cli`'s command.
pub fn run(cli: &Cli) -> Result<Printed, CliError> {
    let control = cli.control.as_path();
    match &cli.command {
        Command::Vm { command } => vm(control, command),
        Command::Stats { json } => match call(control, &Request::Stats {})? {
            Answer::Stats(s) if *json => Ok(Printed::out(json_line(&s)?)),
            Answer::Stats(s) => Ok(Printed::out(render::stats(&s))),
            other => Err(CliError::Unexpected {
                request: "stats",
                answer: answer_kind(&other),
            }),
        },
        Command::Reload { json } => match call(control, &Request::Reload {})? {
            Answer::Reloaded(r) if *json => Ok(Printed::out(json_line(&r)?)),
            Answer::Reloaded(r) => Ok(Printed::out(render::reloaded(&r))),
            other => Err(CliError::Unexpected {
                request: "reload",
                answer: answer_kind(&other),
            }),
        },
        Command::QemuArgs(q) => qemu(control, q),
        Command::ChArgs(c) => cloud_hypervisor(control, c),
        Command::LibvirtXml(l) => libvirt(control, l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ControlError, ErrorKind};

    #[test]
    fn a_refusal_names_its_kind() {
        let e = CliError::Client(ClientError::Refused(ControlError::new(
            ErrorKind::NoSuchVm,
            "no VM is named `x`",
        )));
        assert_eq!(e.line(), "no VM is named `x` (no_such_vm)");
    }

    #[test]
    fn other_errors_name_their_causes() {
        let e = CliError::Client(ClientError::Connect {
            path: "/run/x.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        let line = e.line();
        assert!(
            line.starts_with("cannot connect to the control socket /run/x.sock"),
            "{line}"
        );
        assert!(line.ends_with(": entity not found"), "{line}");
    }
}
