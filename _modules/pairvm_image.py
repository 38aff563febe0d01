"""pairvm (image): install a guest OS from the image catalogue, with a cloud-init seed.

Part of the ``pairvm`` execution module: this file shares its virtual name
and its gate (docs/architecture.md). The catalogue's checks are in
``pairvmlib.images``, the seed's files in ``pairvmlib.seed``.

:depends: qemu-utils, genisoimage or xorriso, drbd-utils
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import salt.utils.path
from pairvmlib import backup as bk
from pairvmlib import boundary, images, layout, machines
from pairvmlib import host as hostlib
from pairvmlib import seed as seed_files
from pairvmlib.errors import Failed

__virtualname__ = boundary.VIRTUAL_NAME
__virtual__ = boundary.virtual  # the one gate of every pairvm file (docs/architecture.md)


def _host():
    return hostlib.Host.of(globals())


FIRSTBOOT_MAX_BYTES = 256 * 1024
CHECKSUMS_MAX_BYTES = 2**20
COPY_CHUNK = 4 * 2**20
HTTP_TIMEOUT = 60


@boundary.execution
def image(name, dist, hostname=None, password=None, firstboot=None, test=False):
    """
    Write OS image ``dist`` from the catalogue onto stopped VM ``name``'s disc,
    with a cloud-init NoCloud seed CD for its first boot.

    Only on the VM's home host, only while the VM is stopped here, and only
    while DRBD is Connected with both discs UpToDate and the peer Secondary,
    so the peer receives every byte. The catalogue (``pillar.example``,
    ``pairvm:images``) holds the current Debian and Ubuntu LTS cloud images out
    of the box, each checked against the checksum file its distribution
    publishes beside it (``SHA512SUMS``, ``SHA256SUMS``), read anew each time,
    or against a sha256 pinned in pillar. Steps: fetch the image into
    ``/var/cache/pairvm/images/<digest>`` (an http(s) download resumes where it
    stopped; a local path is read in place), check its digest (a mismatch, or
    a checksum file that does not list the image, writes nothing), check it fits, promote the
    DRBD resource, write the image onto ``/dev/drbd<minor>`` (``qemu-img
    convert`` for qcow2), demote it, then build the seed ISO
    ``/var/lib/pairvm/seeds/<name>.iso`` (volume id ``cidata``, mode 0600):
    ``meta-data`` (a new instance-id, ``hostname``), ``user-data`` (root's
    password hash, the SSH keys of pillar ``pairvm:guest_ssh_keys``, the
    ``firstboot`` script run once) and ``network-config`` (the VM's IP, the
    pool's netmask and gateway). ``start`` boots the VM with the seed as its
    CD until ``pairvm.cdrom NAME eject=True``, a new image, or destroy.
    Progress (bytes, rate, ETA, and ``phase``: download, verify or write) is
    reported as event ``pairvm/image/<name>/progress`` and, under salt-call,
    on stderr.

    ``hostname`` is the guest's host name (one label or a fully qualified
    name); by default the VM's name, with pillar ``pairvm:guest_domain``
    appended when set. ``firstboot`` is the
    absolute path of a script on this host (at most 256 KiB), put into the
    seed and run once by cloud-init.

    ``password`` must be a SHA-512 crypt hash (``$6$...``): a plaintext
    password is refused, because any Salt argument is kept in the master's job
    cache, the minion's proc file and debug log, and the argv of salt-call.
    Make a hash with ``openssl passwd -6`` (it prompts), or use the host
    command ``pairvm image``, which prompts for the password and hashes it
    before calling Salt. Only the hash is ever written to disc, and no
    result, event or log line carries it.

    CLI Example:

    .. code-block:: bash

        salt hostA pairvm.image vm1 bookworm password="$(openssl passwd -6)"
        salt hostA pairvm.image vm1 trixie vm1.example.org '$6$...' firstboot=/root/setup.sh
        salt hostA pairvm.image vm1 noble password='$6$...' test=True
    """
    host = _host()
    record = host.machine(name)
    if record["home"] != host.me:
        raise Failed(
            f"VM {name}'s home is {record['home']}, not {host.me}: write its image there "
            f"(the home host writes through DRBD, so both hosts get it)"
        )
    pairvm = __pillar__.get("pairvm", {})
    catalogue = images.catalogue(pairvm)
    if dist not in catalogue:
        known = ", ".join(sorted(catalogue)) or "none (pillar pairvm:default_images is false, no images)"
        raise Failed(f"unknown image {dist!r}; known images: {known}")
    hostname = images.guest_hostname(name, hostname, pairvm)
    if not images.is_password_hash(password):
        raise Failed(
            "password: not a SHA-512 crypt hash ($6$...). pairvm.image takes only a hash, so that no "
            "plaintext reaches a job cache, log or process list: make one with `openssl passwd -6` "
            "(it prompts), or run `pairvm image` on the host, which prompts and hashes"
        )
    script = _firstboot_script(host, firstboot)
    ssh_keys = images.guest_ssh_keys(pairvm)
    entry = catalogue[dist]
    iso_tool = next((tool for tool in seed_files.ISO_TOOLS if salt.utils.path.which(tool)), None)
    qemu_img = entry["format"] != "qcow2" or salt.utils.path.which("qemu-img")
    missing = [tool for tool, ok in (("genisoimage or xorriso", iso_tool), ("qemu-img", qemu_img)) if not ok]
    if missing:
        raise Failed(f"image: {' and '.join(missing)} not installed on {host.me}")
    with host.lock(name):
        with host.libvirt() as conn:
            dom = host.domain(conn, name)
            if dom is not None and dom.isActive():
                raise Failed(
                    f"VM {name} is running on {host.me}: stop it before writing an image"
                )
        drbd = host.check_peer_receives(record, "the image")
        want = _expected_digest(host, entry)
        plan = host.plan(name, test)
        source = _image_steps(host, plan, record, dist, entry, drbd, want)
        seed = layout.seed_path(name)
        files = seed_files.files(record, f"pairvm-{name}-{int(time.time())}", hostname,
                                 password, ssh_keys, script)
        plan.step(f"{iso_tool} -volid {seed_files.VOLUME_ID} ({', '.join(files)}) -> {seed} (mode 0600)",
                  _write_seed, host, seed, files, iso_tool)
        return plan.result(f"VM {name} has image {dist} ({source}) and boots with seed {seed} "
                           f"as hostname {hostname}")


def _firstboot_script(host, path):
    """The text of the first-boot script at ``path`` (None for none), checked."""
    if path is None:
        return None
    if not isinstance(path, str) or not os.path.isabs(path) or ".." in path.split("/"):
        raise Failed(f"firstboot: {path!r} is not an absolute path without '..'")
    if not os.path.isfile(path):
        raise Failed(f"firstboot: {path} is not a file on {host.me}")
    if os.path.getsize(path) > FIRSTBOOT_MAX_BYTES:
        raise Failed(f"firstboot: {path} is larger than {FIRSTBOOT_MAX_BYTES // 1024} KiB")
    try:
        with open(path) as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise Failed(f"firstboot: {path} is not a UTF-8 text script") from exc


def _expected_digest(host, entry):
    """(algorithm, hex digest, where it comes from) of the catalogue entry's image: its pinned
    sha256, or what the checksum file beside it lists (read now, so never stale)."""
    if entry["sha256"]:
        return "sha256", entry["sha256"], "the catalogue"
    where = entry["checksums"]
    text = _read_small(host, where)
    algorithm, digest = images.expected_digest(text, entry["source"].rsplit("/", 1)[-1], where)
    return algorithm, digest, where


def _read_small(host, where):
    """The text of a checksum file: a local path or an http(s) URL, at most 1 MiB."""
    try:
        if where.startswith("/"):
            with open(where, "rb") as fh:
                data = fh.read(CHECKSUMS_MAX_BYTES + 1)
        else:
            with urllib.request.urlopen(where, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 - http(s) only
                data = response.read(CHECKSUMS_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise Failed(f"image: cannot fetch the checksum file {where}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Failed(f"image: cannot read the checksum file {where} on {host.me}: {exc}") from exc
    if len(data) > CHECKSUMS_MAX_BYTES:
        raise Failed(f"image: the checksum file {where} is larger than 1 MiB: not a checksum file")
    return data.decode("utf-8", "replace")


def _image_steps(host, plan, record, dist, entry, drbd, want):
    """Fetch and check the image, then write it through DRBD; returns its source."""
    name, (algorithm, digest, _) = record["name"], want
    device = layout.drbd_device(record["drbd_minor"])
    source = entry["source"]
    if source.startswith("/"):
        path = source
        plan.step(f"{algorithm}sum {path} (expect {digest})", _verify_image, host, name, path, want, False)
    else:
        path = os.path.join(layout.IMAGE_CACHE_DIR, digest)
        if os.path.exists(path):
            plan.step(f"{algorithm}sum {path} (cached {dist}, expect {digest})",
                      _verify_image, host, name, path, want, True)
        else:
            plan.step(f"download {source} -> {path}.part (resumable)",
                      _download, host, name, source, f"{path}.part")
            plan.step(f"{algorithm}sum {path}.part (expect {digest}), then rename it to {path}",
                      _verify_download, host, name, path, want)
    plan.step(f"check that {entry['format']} image {dist} fits on {device}",
              _check_fits, host, record, path, entry["format"])
    old_seed = machines.seed(name)
    if old_seed:  # it belongs to the image about to be overwritten
        plan.step(f"rm {old_seed} (the seed of the previous image)", os.unlink, old_seed)
    promote = drbd.get("role") != "Primary"
    if promote:
        plan.step(f"drbdadm primary {name}", __salt__["drbd.primary"], name)
    try:
        if entry["format"] == "qcow2":
            plan.step(f"qemu-img convert -p -n -f qcow2 -O raw {path} {device}",
                      _convert_qcow2, host, name, path, device)
        else:
            plan.step(f"copy {path} -> {device} (raw)", _copy_raw, host, name, path, device)
    except Exception:
        if promote and not plan.test:
            host.demote_after_failure(name, "image")
        raise
    if promote:
        plan.step(f"drbdadm secondary {name}", __salt__["drbd.secondary"], name)
    return source


def _digest_of(host, name, path, algorithm):
    digest = hashlib.new(algorithm)
    report = host.reporter("image", name, os.path.getsize(path), phase="verify")
    done = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(COPY_CHUNK), b""):
            digest.update(chunk)
            done += len(chunk)
            report(done)
    report(done, final=True)
    return digest.hexdigest()


def _verify_image(host, name, path, want, cached):
    algorithm, digest, origin = want
    if not os.path.isfile(path):
        raise Failed(f"image: {path} does not exist on {host.me}")
    found = _digest_of(host, name, path, algorithm)
    if found != digest:
        if cached:
            os.unlink(path)
        raise Failed(
            f"image: {algorithm} of {path} is {found}, {origin} says {digest}: nothing was written"
            + ("; the cached copy was removed, run again to download it anew" if cached else "")
        )


def _verify_download(host, name, path, want):
    algorithm, digest, origin = want
    part = f"{path}.part"
    found = _digest_of(host, name, part, algorithm)
    if found != digest:
        os.unlink(part)  # complete but wrong: resuming it could never help
        raise Failed(
            f"image: {algorithm} of the download is {found}, {origin} says {digest}: nothing was written "
            f"(is the image on the server damaged or tampered with, or the hash wrong?)"
        )
    os.rename(part, path)


def _download(host, name, url, part):
    """Download ``url`` into ``part``, continuing a partial file with an HTTP Range request."""
    os.makedirs(layout.IMAGE_CACHE_DIR, mode=0o700, exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT)  # noqa: S310 - http(s) only, checked
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already whole
            return
        raise Failed(f"image: download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Failed(f"image: download of {url} failed: {exc}") from exc
    with response:
        if have and response.status != 206:  # the server ignored Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        report = host.reporter("image", name, total, phase="download")
        done = have
        try:
            with open(part, "ab" if have else "wb") as out:
                os.chmod(part, 0o600)
                for chunk in iter(lambda: response.read(COPY_CHUNK), b""):
                    out.write(chunk)
                    done += len(chunk)
                    report(done)
        except OSError as exc:
            raise Failed(
                f"image: download of {url} stopped at {done} bytes ({exc}); run again to resume"
            ) from exc
        report(done, final=True)
    if total is not None and done < total:
        raise Failed(f"image: download of {url} stopped at {done} of {total} bytes; "
                                    f"run again to resume")


def _qcow2_info(host, path):
    info = json.loads(host.run(["qemu-img", "info", "--output=json", path], f"qemu-img info {path}"))
    if info.get("format") != "qcow2":
        raise Failed(f"image: {path} is {info.get('format')}, not qcow2 as the catalogue says")
    if info.get("backing-filename"):  # it would pull another file of this host onto the disc
        raise Failed(f"image: {path} has a backing file: give a self-contained qcow2 image")
    return info


def _check_fits(host, record, path, fmt):
    """Refuse an image that is not of its catalogue format, or larger than the disc: the
    DRBD data area of the VM's LV, from its size (DRBD 8.4 does not open a Secondary's
    device, so the device itself cannot be asked before the promotion)."""
    name = record["name"]
    size = _qcow2_info(host, path)["virtual-size"] if fmt == "qcow2" else os.path.getsize(path)
    lv = f"{host.vg(record)}/{name}"
    if lv not in host.lvs():
        raise Failed(f"VM {name}'s LV {lv} does not exist on {host.me}")
    disc = bk.drbd_data_bytes(host.lvs()[lv] * 2**20)
    if size > disc:
        raise Failed(
            f"image: {size} bytes do not fit on VM {name}'s disc ({disc} bytes): grow it with pairvm.resize"
        )


def _copy_raw(host, name, path, device):
    report = host.reporter("image", name, os.path.getsize(path), phase="write")
    done = 0
    with open(path, "rb") as src, open(device, "r+b") as dst:
        for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
            dst.write(chunk)
            done += len(chunk)
            report(done)
        dst.flush()
        os.fsync(dst.fileno())
    report(done, final=True)


def _convert_qcow2(host, name, path, device):
    """qemu-img convert onto the device, its -p percentages turned into progress reports."""
    total = _qcow2_info(host, path).get("virtual-size")
    report = host.reporter("image", name, total, phase="write")
    argv = ["qemu-img", "convert", "-p", "-n", "-f", "qcow2", "-O", "raw", path, device]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        text = b""
        for byte in iter(lambda: proc.stdout.read(1), b""):
            if byte not in (b"\r", b"\n"):
                text += byte
                continue
            match = re.search(rb"\(([0-9.]+)/100%\)", text)
            text = b""
            if match and total:
                report(int(float(match.group(1)) * total / 100))
        stderr = proc.stderr.read().decode("utf-8", "replace")
        if proc.wait() != 0:
            raise Failed(f"qemu-img convert {path} -> {device} failed: {stderr.strip()}")
    report(total or 0, final=True)


def _write_seed(host, seed, files, tool):
    """Build the NoCloud ISO from files written into a root-only directory; 0600, atomically."""
    os.makedirs(layout.SEED_DIR, mode=0o711, exist_ok=True)
    os.chmod(layout.SEED_DIR, 0o711)  # qemu (libvirt chowns the ISO to it) must reach the file, not list
    work = tempfile.mkdtemp(prefix=".seed-", dir=layout.SEED_DIR)  # mode 0700
    try:
        for fname, text in files.items():
            fd = os.open(os.path.join(work, fname), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        tmp = os.path.join(work, "seed.iso")
        paths = [os.path.join(work, fname) for fname in files]
        host.run(seed_files.iso_argv(tool, tmp, paths), f"{tool} (seed ISO)")
        os.chmod(tmp, 0o600)
        os.rename(tmp, seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
