//! `AXL_Config` over the caller's own KVTree: a program that builds a
//! kvtree has KVTree loaded, so its functions are looked up at run time
//! (`dlsym(RTLD_DEFAULT, …)`) and libaxl has no build dependency on it.
//! Without KVTree in the process, `AXL_Config` fails (returns NULL).

use std::ffi::{CStr, c_char, c_int, c_ulong, c_void};
use std::mem::transmute;

use ferry_capi::boundary::CError;

use crate::{AXL_SUCCESS, axl, config, table};

/// KVTree's `KVTREE_SUCCESS`.
const KVTREE_SUCCESS: c_int = 0;

/// The global keys AXL 0.9 reads and reports.
pub const KEYS: [&CStr; 6] = [
    c"FILE_BUF_SIZE",
    c"DEBUG",
    c"MKDIR",
    c"USE_EXTENSION",
    c"COPY_METADATA",
    c"RANK",
];

type NewFn = unsafe extern "C" fn() -> *mut c_void;
type SetIntFn = unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int;
type GetIntFn = unsafe extern "C" fn(*const c_void, *const c_char, *mut c_int) -> c_int;
type SetBytesFn = unsafe extern "C" fn(*mut c_void, *const c_char, c_ulong) -> c_int;
type GetBytesFn = unsafe extern "C" fn(*const c_void, *const c_char, *mut c_ulong) -> c_int;
type ElemFn = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type KeyFn = unsafe extern "C" fn(*const c_void) -> *mut c_char;

/// The KVTree functions `AXL_Config` uses.
pub struct KvTree {
    new: NewFn,
    set_int: SetIntFn,
    get_int: GetIntFn,
    set_bytecount: SetBytesFn,
    get_bytecount: GetBytesFn,
    elem_first: ElemFn,
    elem_next: ElemFn,
    elem_key: KeyFn,
}

impl KvTree {
    /// KVTree's functions in this process, or the name of one missing.
    pub fn find() -> Result<KvTree, &'static str> {
        fn sym(name: &'static CStr) -> Result<*mut c_void, &'static str> {
            // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
            // looks the symbol up.
            let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            if f.is_null() {
                Err(name.to_str().unwrap_or("kvtree"))
            } else {
                Ok(f)
            }
        }
        // SAFETY: each symbol is KVTree's function of that name, whose C
        // signature the field's type spells (kvtree.h, kvtree_util.h).
        unsafe {
            Ok(KvTree {
                new: transmute::<*mut c_void, NewFn>(sym(c"kvtree_new")?),
                set_int: transmute::<*mut c_void, SetIntFn>(sym(c"kvtree_util_set_int")?),
                get_int: transmute::<*mut c_void, GetIntFn>(sym(c"kvtree_util_get_int")?),
                set_bytecount: transmute::<*mut c_void, SetBytesFn>(sym(
                    c"kvtree_util_set_bytecount",
                )?),
                get_bytecount: transmute::<*mut c_void, GetBytesFn>(sym(
                    c"kvtree_util_get_bytecount",
                )?),
                elem_first: transmute::<*mut c_void, ElemFn>(sym(c"kvtree_elem_first")?),
                elem_next: transmute::<*mut c_void, ElemFn>(sym(c"kvtree_elem_next")?),
                elem_key: transmute::<*mut c_void, KeyFn>(sym(c"kvtree_elem_key")?),
            })
        }
    }

    /// The top-level keys of `tree`.
    ///
    /// # Safety
    /// `tree` is a valid kvtree.
    pub unsafe fn keys(&self, tree: *const c_void) -> Vec<String> {
        let mut keys = Vec::new();
        // SAFETY: walking a valid tree with its own functions; keys are
        // NUL-terminated strings it owns.
        unsafe {
            let mut elem = (self.elem_first)(tree);
            // Bounded by the tree's size; a tree larger than this is not a
            // configuration.
            while !elem.is_null() && keys.len() < 1024 {
                let key = (self.elem_key)(elem);
                if !key.is_null() {
                    keys.push(CStr::from_ptr(key).to_string_lossy().into_owned());
                }
                elem = (self.elem_next)(elem);
            }
        }
        keys
    }

    /// The number under `key` (`None`: absent or not a number).
    ///
    /// # Safety
    /// `tree` is a valid kvtree.
    pub unsafe fn get(&self, tree: *const c_void, key: &CStr) -> Option<u64> {
        // SAFETY: valid tree, NUL-terminated key, out-pointer to a local.
        unsafe {
            if key == c"FILE_BUF_SIZE" {
                let mut v: c_ulong = 0;
                ((self.get_bytecount)(tree, key.as_ptr(), &mut v) == KVTREE_SUCCESS).then_some(v)
            } else {
                let mut v: c_int = 0;
                ((self.get_int)(tree, key.as_ptr(), &mut v) == KVTREE_SUCCESS)
                    .then(|| u64::try_from(v).ok())
                    .flatten()
            }
        }
    }

    /// A new tree holding `values` (key, number).
    pub fn tree(&self, values: &[(&CStr, u64)]) -> Option<*mut c_void> {
        // SAFETY: KVTree's constructor and setters on the tree it made.
        unsafe {
            let tree = (self.new)();
            if tree.is_null() {
                return None;
            }
            for (key, value) in values {
                let rc = if *key == c"FILE_BUF_SIZE" {
                    (self.set_bytecount)(tree, key.as_ptr(), *value as c_ulong)
                } else {
                    (self.set_int)(tree, key.as_ptr(), *value as c_int)
                };
                if rc != KVTREE_SUCCESS {
                    return None;
                }
            }
            Some(tree)
        }
    }
}

/// AXL 0.9's configuration tree, through the caller's KVTree: NULL reads
/// the current settings into a new tree; a tree sets the keys it holds
/// (`FILE_BUF_SIZE`, `DEBUG`, `MKDIR`, `USE_EXTENSION`, `COPY_METADATA`,
/// `RANK`) and returns it. NULL on failure: an unknown key (per-transfer
/// `id` subtrees included), a value that is not a number, or no KVTree in
/// the process.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn AXL_Config(tree: *const c_void) -> *mut c_void {
    let mut out = std::ptr::null_mut();
    let rc = axl("AXL_Config", || {
        let kv = KvTree::find().map_err(|missing| {
            CError::invalid(format!(
                "KVTree is not loaded in this process ({missing} not found): \
                 AXL_Config works on the caller's KVTree"
            ))
        })?;
        let mut settings = config()?;
        if tree.is_null() {
            let values = [
                (c"FILE_BUF_SIZE", settings.file_buf_size),
                (c"DEBUG", settings.debug as u64),
                (c"MKDIR", settings.mkdir as u64),
                (c"USE_EXTENSION", settings.use_extension as u64),
                (c"COPY_METADATA", settings.copy_metadata as u64),
                (c"RANK", settings.rank),
            ];
            out = kv
                .tree(&values)
                .ok_or_else(|| CError::invalid("KVTree could not build the settings tree"))?;
            return Ok(AXL_SUCCESS);
        }
        // SAFETY: the caller passes a kvtree (axl.h).
        for key in unsafe { kv.keys(tree) } {
            let Some(known) = KEYS.iter().find(|k| k.to_bytes() == key.as_bytes()) else {
                let hint = if key == "id" {
                    " (per-transfer settings are not supported by ferry)"
                } else {
                    ""
                };
                return Err(CError::invalid(format!(
                    "unknown configuration key {key}{hint}"
                )));
            };
            // SAFETY: as above.
            let value = unsafe { kv.get(tree, known) }.ok_or_else(|| {
                CError::invalid(format!(
                    "configuration key {key} is not a non-negative number"
                ))
            })?;
            match key.as_str() {
                "FILE_BUF_SIZE" => settings.file_buf_size = value,
                "DEBUG" => settings.debug = value != 0,
                "MKDIR" => settings.mkdir = value != 0,
                "USE_EXTENSION" => settings.use_extension = value != 0,
                "COPY_METADATA" => settings.copy_metadata = value != 0,
                _ => settings.rank = value,
            }
        }
        // Applied to what follows; AXL_Init with nothing initialised reads
        // the environment again, as AXL's does.
        table().config = Some(settings);
        out = tree as *mut c_void;
        Ok(AXL_SUCCESS)
    });
    if rc == AXL_SUCCESS {
        out
    } else {
        std::ptr::null_mut()
    }
}
