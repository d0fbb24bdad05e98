"""Marking what `autoswap swap` writes as AI-generated, three ways, and reading the marks back.

1. **A statement in the file's metadata**, naming autoswap and its version: XMP (IPTC
   DigitalSourceType compositeWithTrainedAlgorithmicMedia, CreatorTool, a description, the
   watermark ID and the MLflow run) in every image, plus a PNG text chunk or a JPEG comment;
   container tags (comment, description, ...) in a video.
2. **An invisible watermark in the pixels**: a 32-bit ID tied to the MLflow run that made the
   model, with a CRC-16, embedded by quantisation index modulation in mid-frequency DCT
   coefficients of the Haar LL band of the luma (autoswap.watermark: the maths; here: which ID,
   and the registry that maps IDs back to runs).
3. **A C2PA manifest** signed with `c2pa-python`: actions c2pa.opened (the input, as the parent
   ingredient) and c2pa.edited with digitalSourceType compositeWithTrainedAlgorithmicMedia.
   Without a certificate of your own (swap.signer_cert / signer_key) a local CA and signer are
   made once with `cryptography` and cached under swap.key_dir (~/.config/autoswap by default,
   private key mode 0600): such a manifest validates but reads as `signingCredential.untrusted`.

Files in swap.key_dir are shared by every `autoswap swap` of the user, so several may run at
once: the ID registry and the local signer are each changed under an exclusive lock (flock on a
`.lock` file beside them) and written atomically (a unique temporary name, fsync, rename); a
registry that does not parse is set aside (`watermark_ids.json.corrupt-<time>`), never
overwritten. A private key open to other users is refused when it is yours (swap.signer_key) and
set back to 0600, with a warning, when autoswap made it. Outputs appear only complete (written
under a temporary name in their folder, then renamed).

None of the three can be switched off: `swap` always writes them.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoswap import __version__
from autoswap.errors import UserError, naming
from autoswap.files import discard
from autoswap.watermark import WM_ID_BITS, detect_watermark, detect_watermark_frames, embed_watermark

GENERATOR = "autoswap"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
XMP_NS = "https://github.com/autoswap/autoswap/ns/1.0/"
WATERMARK_ASSERTION = "org.autoswap.watermark"

# image formats swap can write (each carries XMP and a C2PA manifest), by suffix
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
MIME = {
    "JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff",
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime",
}
VIDEO_OUT_SUFFIXES = (".mp4", ".m4v", ".mov")


def _warn(msg: str) -> None:
    print(f"autoswap: warning: {msg}", file=sys.stderr)


# ============================================================================= files
def _temp_beside(path: Path, mode: int = 0o666) -> tuple[int, Path]:
    """(fd, name) of a new empty file with a unique hidden name in `path`'s folder, created with
    `mode` (less the umask) from the start: O_EXCL, so never someone else's file."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), tmp
        except FileExistsError:
            continue


def _publish(tmp: Path, dst: Path) -> None:
    """Put the finished file `tmp` (in `dst`'s file system) in place as `dst`: fsync, then one
    rename, so `dst` is either what it was or the complete new file."""
    from autoswap.files import fsync_dir

    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(Path(dst).parent)


def _atomic_write_bytes(path: Path, data: bytes, mode: int = 0o666) -> None:
    fd, tmp = _temp_beside(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish(tmp, path)
    except OSError as e:
        discard(tmp)
        raise naming(e, path, tmp) from None
    except BaseException:
        discard(tmp)
        raise


@contextmanager
def _locked(lock: Path):
    """An exclusive lock: flock on `lock` (made if missing), released when the block ends or the
    process dies. Not re-entrant: never nest two for the same file."""
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _aside(path: Path, why: str) -> Path:
    """A free name beside `path` to keep it under: <name>.<why>-<UTC time>[-n]."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside, n = path.with_name(f"{path.name}.{why}-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.{why}-{stamp}-{n}"), n + 1
    return aside


# ============================================================================= the statement
def statement_text(wm_id: int, run_id: str | None) -> str:
    run = f", MLflow run {run_id}" if run_id else ""
    return (f"AI-generated: faces were replaced by {GENERATOR} {__version__} (face-swap network{run}); "
            f"invisible watermark ID {wm_id:08x}")


def xmp_packet(wm_id: int, run_id: str | None) -> bytes:
    from xml.sax.saxutils import escape, quoteattr

    desc = escape(statement_text(wm_id, run_id))
    run = f"\n    autoswap:MLflowRunID={quoteattr(run_id)}" if run_id else ""
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:autoswap="{XMP_NS}"
    Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}"
    xmp:CreatorTool="{GENERATOR} {__version__}"
    autoswap:AIGenerated="True"
    autoswap:Version="{__version__}"
    autoswap:WatermarkID="{wm_id:08x}"{run}>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{desc}</rdf:li></rdf:Alt></dc:description>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>""".encode()


def video_tags(wm_id: int, run_id: str | None) -> dict[str, str]:
    """Container metadata for a video. MP4/MOV keep these with movflags=use_metadata_tags."""
    text = statement_text(wm_id, run_id)
    tags = {
        "comment": text, "description": text, "software": f"{GENERATOR} {__version__}",
        "ai_generated": "true", "digital_source_type": DIGITAL_SOURCE_TYPE,
        "autoswap_version": __version__, "autoswap_watermark_id": f"{wm_id:08x}",
    }
    if run_id:
        tags["autoswap_mlflow_run_id"] = run_id
    return tags


def save_image(path: Path, rgb: np.ndarray, fmt: str, wm_id: int, run_id: str | None,
               icc_profile: bytes | None = None) -> None:
    """Write `rgb` as `fmt` (JPEG, PNG, WEBP, TIFF) with the AI-generated statement: XMP in all,
    plus a JPEG comment, PNG tEXt chunks (Description, Software) or TIFF ImageDescription."""
    from PIL import Image, PngImagePlugin

    img = Image.fromarray(np.ascontiguousarray(rgb))
    text, xmp = statement_text(wm_id, run_id), xmp_packet(wm_id, run_id)
    kw: dict[str, Any] = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "JPEG":
        kw |= {"quality": 95, "comment": text.encode(), "xmp": xmp}
    elif fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Description", text)
        info.add_text("Software", f"{GENERATOR} {__version__}")
        info.add_itxt("XML:com.adobe.xmp", xmp.decode())
        kw |= {"pnginfo": info}
    elif fmt == "WEBP":
        kw |= {"quality": 95, "xmp": xmp}
    elif fmt == "TIFF":
        kw |= {"compression": "tiff_lzw", "tiffinfo": {270: text, 305: f"{GENERATOR} {__version__}", 700: xmp}}
    else:
        raise ValueError(f"cannot write {fmt}")
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        img.save(tmp, fmt, **kw)  # PIL opens it itself (TIFF with libtiff needs a real file)
        _publish(tmp, path)
    except OSError as e:
        discard(tmp)
        raise naming(e, path, tmp) from None
    except BaseException:
        discard(tmp)
        raise


def read_statement(path: Path) -> dict:
    """The AI-generated statement in a file's metadata: {"found", "where": [...], "text",
    "generator", "watermark_id", "mlflow_run_id"}."""
    path = Path(path)
    texts: dict[str, str] = {}
    if path.suffix.lower() in IMAGE_FORMATS or path.suffix.lower() in (".gif", ".bmp"):
        from PIL import Image

        try:
            with Image.open(path) as img:
                info = dict(img.info)
        except Exception:
            info = {}
        for key, where in (("xmp", "XMP"), ("comment", "JPEG comment"), ("Description", "PNG text"),
                           ("Software", "PNG text")):
            v = info.get(key)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if isinstance(v, str) and v:
                texts.setdefault(where, "")
                texts[where] += v + "\n"
    else:
        try:
            import av

            with av.open(str(path)) as c:
                tags = dict(c.metadata)
            texts = {"container tags": "\n".join(f"{k}={v}" for k, v in tags.items())} if tags else {}
        except Exception:
            texts = {}
    found = {w: t for w, t in texts.items() if "AI-generated" in t or DIGITAL_SOURCE_TYPE in t}
    joined = "\n".join(found.values())
    wm = re.search(r"(?:WatermarkID=\"|autoswap_watermark_id=|watermark ID )([0-9a-f]{8})", joined)
    run = re.search(r"(?:MLflowRunID=\"|autoswap_mlflow_run_id=|MLflow run )([0-9A-Za-z_-]+)", joined)
    gen = re.search(rf"{GENERATOR} (\d[\w.+-]*)", joined)
    line = next((ln for ln in joined.splitlines() if "AI-generated:" in ln), None)
    return {
        "found": bool(found),
        "where": sorted(found),
        "text": re.sub(r"^.*?(AI-generated:)", r"\1", line.strip()).split("<")[0] if line else None,
        "generator": f"{GENERATOR} {gen.group(1)}" if gen else None,
        "watermark_id": wm.group(1) if wm else None,
        "mlflow_run_id": run.group(1) if run else None,
    }


# ============================================================================= IDs and registry
def watermark_id(run: dict, model_json: bytes = b"") -> int:
    """The 32-bit watermark ID of a model: the first 4 bytes of SHA-256 of its MLflow run id
    (`run`: {"mlflow_run_id", "mlflow_tracking_uri"}, as the registry keeps it), or of
    `model_json`, the bytes that stand for the model, when it has none."""
    run_id = run.get("mlflow_run_id")
    key = f"autoswap-watermark:{run_id}".encode() if run_id else b"autoswap-watermark-json:" + model_json
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")


def key_dir(configured: Path | None) -> Path:
    if configured is not None:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "autoswap"


REGISTRY = "watermark_ids.json"


def register_id(folder: Path, wm_id: int, run: dict, model_dir: Path) -> None:
    """Remember which model (`run`, see watermark_id) an ID belongs to, in folder/watermark_ids.json: read,
    add and write back under a lock (watermark_ids.json.lock), so swaps run at once lose no ID;
    the file is replaced atomically. A registry that does not parse is kept aside, not lost."""
    from autoswap.files import atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REGISTRY
    key = f"{wm_id:08x}"
    with _locked(folder / f"{REGISTRY}.lock"):
        reg = _read_registry(path)
        if key in reg:
            return
        reg[key] = {
            "mlflow_run_id": run.get("mlflow_run_id"),
            "mlflow_tracking_uri": run.get("mlflow_tracking_uri"),
            "model": str(Path(model_dir).resolve()),
            "registered": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(path, reg)


def _read_registry(path: Path) -> dict:
    """The registry at `path` ({} when there is none). One that does not parse as a JSON object
    is renamed to <name>.corrupt-<time>, with a warning, and {} returned: the caller then starts
    a new one and the old entries can still be recovered by hand. Call under the lock."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        reg = json.loads(raw.decode("utf-8"))
    except ValueError:  # also UnicodeDecodeError
        reg = None
    if isinstance(reg, dict):
        return reg
    aside = _aside(path, "corrupt")
    os.replace(path, aside)
    _warn(f"{path}: not a valid watermark ID registry; kept it as {aside.name} and started a new one")
    return {}


def lookup_registry(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / REGISTRY).read_text())
    except (OSError, ValueError):
        return {}


# ============================================================================= C2PA
_C2PA_CA, _C2PA_CHAIN, _C2PA_KEY = "c2pa-ca.pem", "c2pa-signer-chain.pem", "c2pa-signer.key"
_C2PA_LOCK = "c2pa-signer.lock"


def _make_local_signer(folder: Path) -> None:
    """A local CA and a leaf signing certificate (P-256, 10 years). c2pa refuses a lone
    self-signed certificate; the leaf needs SKI, AKI and the emailProtection EKU.

    Each file is written atomically, the key with mode 0600 from the start, and the chain last
    (after removing any old one): a chain on disk always belongs to the key beside it, even if
    this is interrupted. Where other processes may use `folder`, hold its lock
    (`_locked(folder / _C2PA_LOCK)`, as C2paSigner.load does)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(days=1), "not_valid_after": now + datetime.timedelta(days=3650)}
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "autoswap (locally made, untrusted)")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "autoswap local CA"), org])
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
          .not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "autoswap local signer"), org])
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
            .not_valid_after(valid["not_valid_after"])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / _C2PA_CHAIN).unlink(missing_ok=True)
    _atomic_write_bytes(folder / _C2PA_KEY, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()), 0o600)
    _atomic_write_bytes(folder / _C2PA_CA, ca.public_bytes(pem), 0o644)
    _atomic_write_bytes(folder / _C2PA_CHAIN, leaf.public_bytes(pem) + ca.public_bytes(pem), 0o644)


def _key_matches_chain(key_pem: bytes, chain_pem: bytes) -> bool:
    """Whether the private key belongs to the chain's first (leaf) certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except (ValueError, TypeError, IndexError):
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki)


def _loose(path: Path) -> int | None:
    """The mode of a private key file when group or others may use it, else None."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return mode if mode & 0o077 else None


def _alg_for(key_pem: bytes, where: Path):
    import c2pa
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise UserError(f"{where}: not an unencrypted PEM private key; export it without a passphrase") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: c2pa.C2paSigningAlg.ES256, 384: c2pa.C2paSigningAlg.ES384,
                521: c2pa.C2paSigningAlg.ES512}.get(key.curve.key_size, c2pa.C2paSigningAlg.ES256)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return c2pa.C2paSigningAlg.ED25519
    if isinstance(key, rsa.RSAPrivateKey):
        return c2pa.C2paSigningAlg.PS256
    raise UserError(f"{where}: unsupported key type for C2PA; use EC P-256, Ed25519 or RSA")


@dataclass
class C2paSigner:
    cert_chain: bytes
    private_key: bytes
    local: bool  # True: the locally made CA (manifests read as untrusted)
    where: Path

    @classmethod
    def load(cls, folder: Path, cert: Path | None = None, key: Path | None = None) -> C2paSigner:
        """The user's certificate chain + key, or the local signer in `folder` (made on first use)."""
        if cert is not None and key is not None:
            for p in (cert, key):
                if not Path(p).is_file():
                    raise UserError(f"{p}: not found; set swap.signer_cert and swap.signer_key to PEM files")
            if (mode := _loose(key)) is not None:
                raise UserError(f"{key}: private key readable by other users (mode {mode:04o}); "
                                f"run `chmod 600 {key}`")
            return cls(Path(cert).read_bytes(), Path(key).read_bytes(), False, Path(cert))
        folder = Path(folder)
        chain_path, key_path = folder / _C2PA_CHAIN, folder / _C2PA_KEY
        try:
            with ExitStack() as stack:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    stack.enter_context(_locked(folder / _C2PA_LOCK))
                except OSError:  # a read-only folder that already has a signer: use it unlocked
                    if not (chain_path.is_file() and key_path.is_file()):
                        raise
                if not (chain_path.is_file() and key_path.is_file()):
                    _make_local_signer(folder)
                elif not _key_matches_chain(key_path.read_bytes(), chain_path.read_bytes()):
                    _warn(f"{key_path}: does not match {chain_path.name} (left by an older autoswap run "
                          "at the same time as another); made a new local signer")
                    _make_local_signer(folder)
                if (mode := _loose(key_path)) is not None:
                    try:
                        os.chmod(key_path, 0o600)
                    except OSError:
                        raise UserError(f"{key_path}: private key readable by other users (mode {mode:04o}); "
                                        f"run `chmod 600 {key_path}`") from None
                    _warn(f"{key_path}: was readable by other users (mode {mode:04o}); set it to 0600")
                chain, private = chain_path.read_bytes(), key_path.read_bytes()
        except OSError as e:
            raise UserError(f"{folder}: cannot create the local C2PA signer ({e.strerror or e}); "
                            "set swap.key_dir to a writable folder") from None
        return cls(chain, private, True, folder)

    def signer(self):
        import c2pa

        alg = _alg_for(self.private_key, self.where)
        info = c2pa.C2paSignerInfo(alg, self.cert_chain, self.private_key, None)  # no timestamp server: offline
        try:
            return c2pa.Signer.from_info(info)
        except c2pa.C2paError as e:
            raise UserError(f"{self.where}: C2PA refused the certificate ({e}); check the chain and key") from None


def c2pa_manifest(title: str, wm_id: int, run_id: str | None) -> dict:
    agent = {"name": GENERATOR, "version": __version__}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [
                {"action": "c2pa.opened", "parameters": {"ingredientIds": ["input"]}},
                {"action": "c2pa.edited", "digitalSourceType": DIGITAL_SOURCE_TYPE, "softwareAgent": agent,
                 "description": "faces replaced by a face-swap network (AI-generated)"},
            ]}},
            {"label": WATERMARK_ASSERTION, "data": {
                "id": f"{wm_id:08x}", "bits": WM_ID_BITS, "mlflow_run_id": run_id,
                "method": "QIM in 8x8 DCT of the Haar LL band of the luma, 256x256 canvas, CRC-16"}},
        ],
    }


def sign_c2pa(signer: C2paSigner, src: Path, dst: Path, mime: str, parent: Path, parent_mime: str | None,
              wm_id: int, run_id: str | None) -> None:
    """Write `src` with a signed C2PA manifest to `dst` (the input `parent` as its ingredient;
    a format C2PA cannot parse, such as MKV, goes in as application/octet-stream)."""
    import c2pa

    manifest = c2pa_manifest(dst.name, wm_id, run_id)
    out = None
    try:
        with c2pa.Builder(manifest) as b:
            ingredient = {"title": parent.name, "relationship": "parentOf", "label": "input"}
            with open(parent, "rb") as p:
                b.add_ingredient(ingredient, parent_mime or "application/octet-stream", p)
            with open(src, "rb") as s, open(dst, "w+b") as d:
                out = _Written(d)
                b.sign(signer.signer(), mime, s, out)
    except c2pa.C2paError as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if out is not None and out.error is not None:  # c2pa says only "JPEG write error"
            raise naming(out.error, dst) from None
        if "write" in why.lower() and _disk_full(dst, src):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst)) from None
        raise UserError(f"{dst}: C2PA signing failed ({why})") from None
    except OSError as e:  # a full disk when the file is closed
        raise naming(e, dst) from None


class _Written:
    """The file c2pa writes the signed copy into, keeping the OSError of a write that failed:
    c2pa turns it into "asset could not be parsed: JPEG write error"."""

    def __init__(self, f) -> None:
        self.f, self.error = f, None

    def _keep(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            self.error = self.error or e
            raise

    def write(self, data):
        return self._keep(self.f.write, data)

    def flush(self):
        return self._keep(self.f.flush)

    def read(self, *args):
        return self.f.read(*args)

    def seek(self, *args):
        return self.f.seek(*args)

    def tell(self):
        return self.f.tell()


def _disk_full(dst: Path, src: Path) -> bool:
    """Whether `dst`'s file system has no room left for a signed copy of `src` (about its size)."""
    try:
        st = os.statvfs(Path(dst).parent)
        need = Path(src).stat().st_size + (64 << 10)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < need


def read_c2pa(path: Path) -> dict:
    """{"found", "state", "untrusted", "actions", "digital_source_type", "generator", "signer",
    "watermark_id", "errors"}."""
    import c2pa

    out: dict[str, Any] = {"found": False}
    try:
        reader = c2pa.Reader(str(path))
    except c2pa.C2paError as e:
        out["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        return out
    with reader:
        manifest = reader.get_active_manifest() or {}
        state = reader.get_validation_state()
        results = reader.get_validation_results() or {}
    failures = [f.get("code") for f in (results.get("activeManifest") or {}).get("failure", [])]
    actions, source = [], None
    wm = None
    for a in manifest.get("assertions", []):
        if a.get("label", "").startswith("c2pa.actions"):
            for act in a.get("data", {}).get("actions", []):
                actions.append(act.get("action"))
                source = act.get("digitalSourceType") or source
        if a.get("label") == WATERMARK_ASSERTION:
            wm = a.get("data", {}).get("id")
    gen = (manifest.get("claim_generator_info") or [{}])[0]
    sig = manifest.get("signature_info") or {}
    out.update(found=bool(manifest), state=state, untrusted="signingCredential.untrusted" in failures,
               errors=[f for f in failures if f != "signingCredential.untrusted"], actions=actions,
               digital_source_type=source, generator=f"{gen.get('name')} {gen.get('version')}".strip(),
               signer=sig.get("common_name"), issuer=sig.get("issuer"), watermark_id=wm)
    return out


# ============================================================================= visible label
def draw_label(rgb: np.ndarray, text: str) -> np.ndarray:
    """A visible label in the bottom-left corner, white on a dark box, scaled to the image."""
    import cv2

    out = rgb.copy()
    h, w = out.shape[:2]
    scale = max(0.35, min(h, w) / 900)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(3, round(6 * scale))
    x0, y1 = pad, h - pad
    cv2.rectangle(out, (x0 - pad // 2, y1 - th - base - pad), (x0 + tw + pad // 2, y1), (20, 20, 20), -1)
    cv2.putText(out, text, (x0, y1 - base - pad // 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return out


# ============================================================================= all three
class Marker:
    """Everything `swap` needs to mark its outputs for one model."""

    def __init__(self, run: dict, model_dir: Path, folder: Path, cert: Path | None = None,
                 key: Path | None = None, label: str | None = None) -> None:
        from autoswap.tracking import model_digest

        # `run`: the model's MLflow run (tracking.model_run's, as swap.FaceSwapModel.run holds it).
        # Without one, the model files' digest (model.json alone is the same for every training of
        # one config)
        model_json = b"" if run.get("mlflow_run_id") else model_digest(model_dir).encode()
        self.wm_id = watermark_id(run, model_json)
        self.run_id = run.get("mlflow_run_id")
        self.label = label
        self.c2pa = C2paSigner.load(folder, cert, key)
        try:
            register_id(folder, self.wm_id, run, model_dir)
        except OSError:
            pass  # the ID is also in every output's XMP and C2PA manifest

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """The visible label (when asked for), then the invisible watermark."""
        if self.label:
            rgb = draw_label(rgb, self.label)
        return embed_watermark(rgb, self.wm_id)

    def write_image(self, dst: Path, rgb: np.ndarray, fmt: str, source: Path, icc: bytes | None = None) -> None:
        """Watermark, write with the statement and sign; `dst` appears only when complete."""
        marked = self.pixels(rgb)
        with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".autoswap-") as tmp:
            plain = Path(tmp) / f"plain{dst.suffix}"
            save_image(plain, marked, fmt, self.wm_id, self.run_id, icc)
            signed = Path(tmp) / f"signed{dst.suffix}"
            sign_c2pa(self.c2pa, plain, signed, MIME[fmt], source, _mime_of(source), self.wm_id, self.run_id)
            _publish(signed, dst)

    def finish_video(self, tmp_video: Path, dst: Path, source: Path) -> None:
        """Sign the encoded `tmp_video` (in a temporary folder beside `dst`) and move it into
        place: `dst` appears only when complete."""
        signed = tmp_video.with_name(tmp_video.stem + ".signed" + tmp_video.suffix)
        sign_c2pa(self.c2pa, tmp_video, signed, MIME[dst.suffix.lower()], source, _mime_of(source),
                  self.wm_id, self.run_id)
        _publish(signed, dst)


def _mime_of(path: Path) -> str | None:
    import c2pa

    suffix = Path(path).suffix.lower()
    mime = {**{k: MIME[v] for k, v in IMAGE_FORMATS.items()}, ".mp4": "video/mp4", ".m4v": "video/mp4",
            ".mov": "video/quicktime", ".avi": "video/x-msvideo", ".gif": "image/gif"}.get(suffix)
    return mime if mime and mime in c2pa.Builder.get_supported_mime_types() else None


# ============================================================================= verify
VERIFY_FRAMES = 24


def verify(path: Path, registry: Path | None = None) -> dict:
    """What `autoswap verify` finds of the three marks in an image or video."""
    from autoswap.images import IMAGE_SUFFIXES, BadImage, load_rgb
    from autoswap.video import VIDEO_SUFFIXES, BadVideo

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        kind = "image"
        try:
            rgb = load_rgb(path)
        except BadImage as e:
            raise UserError(f"{path}: {e}") from None
        reading, frames = detect_watermark(rgb), None
    elif suffix in VIDEO_SUFFIXES:
        kind = "video"
        try:
            sampled = _sample_frames(path, VERIFY_FRAMES)
        except BadVideo as e:
            raise UserError(f"{path}: {e}") from None
        if not sampled:
            raise UserError(f"{path}: the video has no frames")
        reading, alone = detect_watermark_frames(sampled)
        frames = {"sampled": len(sampled), "carrying_id": alone}
    else:
        raise UserError(f"{path}: not a photo or video autoswap reads ({suffix or 'no suffix'})")
    wm: dict[str, Any] = {"found": reading.found, "id": f"{reading.id:08x}" if reading.found else None,
                          "confidence": round(reading.confidence, 3)}
    if frames:
        wm["frames"] = frames
    if reading.found and registry is not None:
        entry = lookup_registry(registry).get(wm["id"])
        if entry:
            wm["mlflow_run_id"] = entry.get("mlflow_run_id")
            wm["model"] = entry.get("model")
    return {"file": str(path), "kind": kind, "metadata": read_statement(path), "watermark": wm,
            "c2pa": read_c2pa(path)}


def _sample_frames(path: Path, n: int) -> list[np.ndarray]:
    from autoswap.video import iter_video_frames, probe_frames

    total = probe_frames(path)
    every = max(1, (total or n) // n)
    return [f.rgb for f in iter_video_frames(path, every_nth=every)][:n]


def copy_unmarked(src: Path, dst: Path) -> None:
    """A photo with no face is copied byte for byte: nothing in it was generated. Copied to a
    temporary name beside `dst`, then renamed: `dst` appears only when complete."""
    dst = Path(dst)
    fd, tmp = _temp_beside(dst)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        _publish(tmp, dst)
    except OSError as e:
        discard(tmp)
        raise naming(e, dst, tmp) from None
    except BaseException:
        discard(tmp)
        raise
