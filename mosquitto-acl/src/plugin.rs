//! The Mosquitto 2.0 plugin interface (version 5): the broker loads this library with
//! `plugin <path>/libedubrain_mosquitto_acl.so` and `plugin_opt_acl_file <path>`, and then asks
//! it every ACL question instead of its own `acl_file` (which must not be set as well: the
//! broker would ask that first and never this).
//!
//! Each refused publish and subscribe is logged at notice level in the broker's log, as
//! `ACL denied <what> from <client id> to '<topic>'`; with `log_dest topic` the broker publishes
//! the line on `$SYS/broker/log/N`, where the edge counts and audits it
//! (edge/src/broker_log.rs). Mosquitto itself logs a denied publish only at debug level, beside
//! every message, and under MQTT 3.1.1 it acknowledges it like an allowed one, so without this
//! nobody would know. A refused read is not logged: it is asked per delivered message, and a
//! subscription that could receive it has already been refused and logged.
//!
//! The structures and constants below are those of Mosquitto 2.0's `mosquitto_broker.h`,
//! `mosquitto_plugin.h` and `mosquitto.h`; the functions are exported by the broker itself.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use crate::acl::{Access, Acl, Client};

const MOSQ_PLUGIN_VERSION: c_int = 5;
const MOSQ_EVT_RELOAD: c_int = 1;
const MOSQ_EVT_ACL_CHECK: c_int = 2;

const MOSQ_ERR_SUCCESS: c_int = 0;
const MOSQ_ERR_INVAL: c_int = 3;
const MOSQ_ERR_ACL_DENIED: c_int = 12;
const MOSQ_ERR_PLUGIN_DEFER: c_int = 17;

const MOSQ_LOG_NOTICE: c_int = 1 << 1;
const MOSQ_LOG_ERR: c_int = 1 << 3;

const MOSQ_ACL_READ: c_int = 0x01;
const MOSQ_ACL_WRITE: c_int = 0x02;
const MOSQ_ACL_SUBSCRIBE: c_int = 0x04;
const MOSQ_ACL_UNSUBSCRIBE: c_int = 0x08;

/// The plugin option naming the ACL file (`plugin_opt_acl_file` in the broker's config).
pub const ACL_FILE_OPTION: &str = "acl_file";

#[repr(C)]
pub struct MosquittoOpt {
    key: *mut c_char,
    value: *mut c_char,
}

#[repr(C)]
struct AclCheckEvent {
    future: *mut c_void,
    client: *mut c_void,
    topic: *const c_char,
    payload: *const c_void,
    properties: *mut c_void,
    access: c_int,
    payloadlen: u32,
    qos: u8,
    retain: bool,
    future2: [*mut c_void; 4],
}

type Callback = unsafe extern "C" fn(event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int;

unsafe extern "C" {
    fn mosquitto_callback_register(
        identifier: *mut c_void,
        event: c_int,
        cb: Callback,
        event_data: *const c_void,
        userdata: *mut c_void,
    ) -> c_int;
    fn mosquitto_callback_unregister(identifier: *mut c_void, event: c_int, cb: Callback, event_data: *const c_void) -> c_int;
    fn mosquitto_log_printf(level: c_int, fmt: *const c_char, ...);
    fn mosquitto_client_id(client: *const c_void) -> *const c_char;
    fn mosquitto_client_username(client: *const c_void) -> *const c_char;
}

/// What the broker keeps for the plugin between calls (its `userdata`).
struct Plugin {
    identifier: *mut c_void,
    path: PathBuf,
    /// Replaced on a reload (SIGHUP). The broker runs every callback on its one thread, and a
    /// check can run inside another (a logged refusal is delivered, and its delivery checked),
    /// so shared borrows nest and the only mutable one is taken outside any check.
    acl: RefCell<Acl>,
}

fn log(level: c_int, line: &str) {
    // A NUL cannot reach here from a topic or client id (MQTT forbids it); cut at one anyway.
    let line = CString::new(line.split('\0').next().unwrap_or_default()).unwrap_or_default();
    // SAFETY: a printf format of one `%s` and one NUL-terminated string argument.
    unsafe { mosquitto_log_printf(level, c"%s".as_ptr(), line.as_ptr()) }
}

fn load(path: &Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading ACL file {}: {e}", path.display()))?;
    Acl::parse(&text).map_err(|e| format!("ACL file {}: {e}", path.display()))
}

/// # Safety
/// `s` is NULL or a NUL-terminated string that outlives the returned borrow.
unsafe fn str_of<'a>(s: *const c_char) -> Option<&'a str> {
    // SAFETY: per this function's contract.
    (!s.is_null()).then(|| unsafe { CStr::from_ptr(s) }.to_str().ok()).flatten()
}

/// Which plugin interface versions the broker offers; this plugin speaks version 5.
///
/// # Safety
/// Called by Mosquitto with `count` versions at `versions`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_version(count: c_int, versions: *const c_int) -> c_int {
    if versions.is_null() || count <= 0 {
        return -1;
    }
    // SAFETY: the broker passes an array of `count` ints.
    let offered = unsafe { std::slice::from_raw_parts(versions, count as usize) };
    if offered.contains(&MOSQ_PLUGIN_VERSION) { MOSQ_PLUGIN_VERSION } else { -1 }
}

/// Reads the ACL file and registers the checks. A missing or malformed file stops the broker
/// from starting, with the reason in its log: a hub must not run without its ACL.
///
/// # Safety
/// Called by Mosquitto once, with its plugin identifier and `count` options at `options`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_init(
    identifier: *mut c_void,
    userdata: *mut *mut c_void,
    options: *mut MosquittoOpt,
    count: c_int,
) -> c_int {
    let opts = if options.is_null() || count <= 0 {
        &[][..]
    } else {
        // SAFETY: the broker passes an array of `count` options.
        unsafe { std::slice::from_raw_parts(options, count as usize) }
    };
    // SAFETY: the option strings live as long as the broker's config.
    let path = opts.iter().find(|o| unsafe { str_of(o.key) } == Some(ACL_FILE_OPTION)).and_then(|o| unsafe { str_of(o.value) });
    let Some(path) = path.map(PathBuf::from) else {
        log(MOSQ_LOG_ERR, &format!("Error: edubrain ACL plugin: plugin_opt_{ACL_FILE_OPTION} is not set"));
        return MOSQ_ERR_INVAL;
    };
    let acl = match load(&path) {
        Ok(acl) => acl,
        Err(e) => {
            log(MOSQ_LOG_ERR, &format!("Error: edubrain ACL plugin: {e}"));
            return MOSQ_ERR_INVAL;
        }
    };
    let plugin = Box::into_raw(Box::new(Plugin { identifier, path, acl: RefCell::new(acl) }));
    // SAFETY: registering this library's callbacks with the identifier the broker gave; the
    // userdata stays valid until `mosquitto_plugin_cleanup` unregisters them and frees it.
    unsafe {
        *userdata = plugin.cast();
        for (event, cb) in [(MOSQ_EVT_ACL_CHECK, on_acl_check as Callback), (MOSQ_EVT_RELOAD, on_reload as Callback)] {
            let rc = mosquitto_callback_register(identifier, event, cb, std::ptr::null(), plugin.cast());
            if rc != MOSQ_ERR_SUCCESS {
                return rc;
            }
        }
    }
    MOSQ_ERR_SUCCESS
}

/// # Safety
/// Called by Mosquitto once, with the userdata `mosquitto_plugin_init` set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mosquitto_plugin_cleanup(userdata: *mut c_void, _options: *mut MosquittoOpt, _count: c_int) -> c_int {
    if userdata.is_null() {
        return MOSQ_ERR_SUCCESS;
    }
    // SAFETY: `userdata` is the Box leaked in `mosquitto_plugin_init`; nothing calls back after.
    unsafe {
        let plugin = Box::from_raw(userdata.cast::<Plugin>());
        mosquitto_callback_unregister(plugin.identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, std::ptr::null());
        mosquitto_callback_unregister(plugin.identifier, MOSQ_EVT_RELOAD, on_reload, std::ptr::null());
    }
    MOSQ_ERR_SUCCESS
}

/// SIGHUP: read the ACL file again, as Mosquitto does its `acl_file`. A file that no longer
/// parses is logged and the previous ACL kept, rather than leaving the hub without one.
unsafe extern "C" fn on_reload(_event: c_int, _event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    // SAFETY: the userdata registered in `mosquitto_plugin_init`.
    let plugin = unsafe { &*userdata.cast::<Plugin>() };
    match load(&plugin.path) {
        Ok(acl) => *plugin.acl.borrow_mut() = acl,
        Err(e) => log(MOSQ_LOG_ERR, &format!("Error: edubrain ACL plugin: {e}; keeping the ACL loaded before")),
    }
    // Let any other plugin reload too.
    MOSQ_ERR_PLUGIN_DEFER
}

unsafe extern "C" fn on_acl_check(_event: c_int, event_data: *mut c_void, userdata: *mut c_void) -> c_int {
    // SAFETY: the broker passes its ACL-check event and the userdata registered at init; the
    // strings live for the duration of the call.
    let (plugin, ed) = unsafe { (&*userdata.cast::<Plugin>(), &*event_data.cast::<AclCheckEvent>()) };
    let (id, username, topic) =
        unsafe { (str_of(mosquitto_client_id(ed.client)), str_of(mosquitto_client_username(ed.client)), str_of(ed.topic)) };
    let (Some(id), Some(topic)) = (id, topic) else { return MOSQ_ERR_ACL_DENIED };
    let access = match ed.access {
        MOSQ_ACL_READ => Access::Read,
        MOSQ_ACL_WRITE => Access::Write,
        MOSQ_ACL_SUBSCRIBE => Access::Subscribe,
        MOSQ_ACL_UNSUBSCRIBE => Access::Unsubscribe,
        _ => return MOSQ_ERR_ACL_DENIED,
    };
    if plugin.acl.borrow().allows(Client { id, username }, access, topic) {
        return MOSQ_ERR_SUCCESS;
    }
    let what = match access {
        Access::Write => Some("PUBLISH"),
        Access::Subscribe => Some("SUBSCRIBE"),
        Access::Read | Access::Unsubscribe => None,
    };
    if let Some(what) = what {
        log(MOSQ_LOG_NOTICE, &denial_line(what, id, topic));
    }
    MOSQ_ERR_ACL_DENIED
}

/// The log line of a refusal; edge/src/broker_log.rs parses it.
pub fn denial_line(what: &str, client_id: &str, topic: &str) -> String {
    format!("ACL denied {what} from {client_id} to '{topic}'")
}
