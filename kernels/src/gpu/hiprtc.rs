//! hipRTC, AMD's run-time compiler, opened with dlopen: Kiln's kernels (the one translation unit NVRTC
//! compiles on NVIDIA, [`super::single_source`]) compiled for the exact AMD GPU, `gfx1100` or whatever
//! comes next, so a new architecture needs no new release. Needs only the library (no GPU): the ROCm
//! runtime carries it, as libhiprtc.so from ROCm 5.6 on and inside libamdhip64.so before that.

use crate::backend::{BackendError, Result};
use std::ffi::{c_char, c_int, CStr, CString};

/// Where hipRTC lives, newest layout first; bare names go through the loader's search path, and ROCm's
/// default prefix is tried for installs that did not register it.
const LIBRARIES: &[&str] = &[
    "libhiprtc.so",
    "libhiprtc.so.6",
    "libhiprtc.so.7",
    "/opt/rocm/lib/libhiprtc.so",
    "libamdhip64.so",
    "libamdhip64.so.6",
    "libamdhip64.so.5",
    "/opt/rocm/lib/libamdhip64.so",
];

type Program = *mut std::ffi::c_void;
type Status = c_int;
const SUCCESS: Status = 0;

type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> Status;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> Status;
type BytesFn = unsafe extern "C" fn(Program, *mut c_char) -> Status;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> Status;
type ErrorStringFn = unsafe extern "C" fn(Status) -> *const c_char;

/// The hipRTC entry points Kiln uses (hiprtc.h).
struct Api {
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: BytesFn,
    code_size: SizeFn,
    code: BytesFn,
    destroy: DestroyFn,
    error_string: ErrorStringFn,
    /// Keeps the functions above loaded.
    _lib: libloading::Library,
}

fn rtc_err(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Device(format!("hiprtc: {what}: {e}"))
}

/// The library, loaded once and never unloaded: the HIP runtime does not survive being unloaded and
/// loaded again within a process.
static API: std::sync::OnceLock<std::result::Result<Api, String>> = std::sync::OnceLock::new();

fn api() -> Result<&'static Api> {
    API.get_or_init(|| Api::open().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| BackendError::Device(e.clone()))
}

impl Api {
    fn open() -> Result<Api> {
        let mut tried = Vec::new();
        for name in LIBRARIES {
            // SAFETY: loading a ROCm library runs its initialisers, which have no preconditions.
            let lib = match unsafe { libloading::Library::new(name) } {
                Ok(lib) => lib,
                Err(e) => {
                    tried.push(format!("{name} ({e})"));
                    continue;
                }
            };
            match Api::bind(lib) {
                Ok(api) => return Ok(api),
                Err(e) => tried.push(format!("{name} (no hipRTC in it: {e})")),
            }
        }
        Err(BackendError::Device(format!(
            "hiprtc: AMD's run-time compiler, needed to build Kiln's kernels for this GPU, was not \
             found (a ROCm install provides it); tried {}",
            tried.join(", ")
        )))
    }

    fn bind(lib: libloading::Library) -> std::result::Result<Api, libloading::Error> {
        // SAFETY: each symbol is looked up by its hiprtc.h name and given that declaration's type; the
        // library stays loaded as long as the pointers (it moves into the same struct).
        unsafe {
            Ok(Api {
                create: *lib.get::<CreateFn>(b"hiprtcCreateProgram\0")?,
                compile: *lib.get::<CompileFn>(b"hiprtcCompileProgram\0")?,
                log_size: *lib.get::<SizeFn>(b"hiprtcGetProgramLogSize\0")?,
                log: *lib.get::<BytesFn>(b"hiprtcGetProgramLog\0")?,
                code_size: *lib.get::<SizeFn>(b"hiprtcGetCodeSize\0")?,
                code: *lib.get::<BytesFn>(b"hiprtcGetCode\0")?,
                destroy: *lib.get::<DestroyFn>(b"hiprtcDestroyProgram\0")?,
                error_string: *lib.get::<ErrorStringFn>(b"hiprtcGetErrorString\0")?,
                _lib: lib,
            })
        }
    }

    fn check(&self, what: &str, status: Status) -> Result<()> {
        if status == SUCCESS {
            return Ok(());
        }
        // SAFETY: hipRTC returns a static string for every status.
        let msg = unsafe { CStr::from_ptr((self.error_string)(status)) };
        Err(rtc_err(
            what,
            format!("{} ({status})", msg.to_string_lossy()),
        ))
    }
}

/// Whether a hipRTC library can be loaded here.
pub fn hiprtc_present() -> bool {
    api().is_ok()
}

/// Kiln's kernels compiled by hipRTC into a code object for `arch` (`gfx1100`, `gfx90a`, ...), with the
/// options the ROCm backend uses. Needs no GPU, only the library.
pub fn compile_kernels(arch: &str) -> Result<Vec<u8>> {
    compile_source(&super::single_source(), arch)
}

pub(crate) fn compile_source(src: &str, arch: &str) -> Result<Vec<u8>> {
    if arch.is_empty()
        || !arch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-' || b == b'+')
    {
        return Err(rtc_err(
            "target",
            format!("`{arch}` is not a GPU architecture name"),
        ));
    }
    let api = api()?;
    let src = CString::new(src).map_err(|e| rtc_err("source", e))?;
    let options: Vec<CString> = [
        format!("--offload-arch={arch}"),
        "-std=c++17".into(),
        "-O3".into(),
    ]
    .into_iter()
    .map(|o| CString::new(o).expect("options have no NUL"))
    .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut prog: Program = std::ptr::null_mut();
    // SAFETY: every pointer passed is valid for the call (NUL-terminated strings, an options array of
    // the stated length); the program is destroyed on every path below.
    unsafe {
        let name = c"kiln.hip";
        api.check(
            "creating the program",
            (api.create)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
        )?;
        let compiled = api.check(
            &format!("compiling Kiln's kernels for {arch}"),
            (api.compile)(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()),
        );
        let result = compiled
            .map_err(|e| {
                let mut n = 0usize;
                let mut log = String::new();
                if (api.log_size)(prog, &mut n) == SUCCESS && n > 1 {
                    let mut buf = vec![0u8; n];
                    if (api.log)(prog, buf.as_mut_ptr().cast()) == SUCCESS {
                        log = String::from_utf8_lossy(&buf[..n - 1]).into_owned();
                    }
                }
                rtc_err("compile log", format!("{e}\n{log}"))
            })
            .and_then(|()| {
                let mut n = 0usize;
                api.check("code size", (api.code_size)(prog, &mut n))?;
                let mut code = vec![0u8; n];
                api.check("code", (api.code)(prog, code.as_mut_ptr().cast()))?;
                Ok(code)
            });
        (api.destroy)(&mut prog);
        result
    }
}
