"""User-facing errors: the CLI prints `autoswap: <message>` on one line and exits non-zero,
with no traceback. Raise these for anything the user can fix (bad params, bad files). I/O errors
(disk full, permission denied, read-only file system) are OSErrors, worded by os_error_line."""

import errno


class UserError(Exception):
    """A problem with the user's input. The message names the file or key and what to do."""

    exit_code = 1


class ConfigError(UserError):
    """params.yaml is missing, malformed, or has an unknown key or a bad value."""

    exit_code = 2


# ----------------------------------------------------------------------------- I/O errors
# what happened, for the errors a user can act on
_WHAT = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def os_error_line(e: OSError, elsewhere: str = "write elsewhere") -> str:
    """One line for an I/O error: the file, what happened, and what to do; `elsewhere` says how
    this command writes somewhere else (e.g. "write elsewhere with --out")."""
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{where}{_WHAT[code]}; free space there (or {elsewhere}) and re-run"
    if code in (errno.EACCES, errno.EPERM):
        return (f"{where}{_WHAT[code]}; give your user access to it and its folder (or {elsewhere}) "
                "and re-run")
    if code == errno.EROFS:
        return f"{where}{_WHAT[code]}; {elsewhere} (or remount it read-write) and re-run"
    return f"{where}{e.strerror or e}; free space or fix permissions, then re-run"


def naming(e: OSError, path, temporary=None) -> OSError:
    """`e` naming `path` when it names no file (a write() on a full disk names none) or only
    `temporary`, the name `path` was being written under (the user never sees that one); a new
    OSError with e's errno where e's file name cannot be changed. Raise what it returns."""
    if getattr(e, "filename", None) and (temporary is None or str(e.filename) != str(temporary)):
        return e
    try:
        e.filename = str(path)
    except AttributeError:  # PyAV's errors: a read-only filename
        return OSError(e.errno, e.strerror or str(e), str(path))
    return e
