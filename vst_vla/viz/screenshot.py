"""Screenshots of .rrd files from the real Rerun viewer, headless: Xvfb + Mesa's Vulkan driver (lavapipe).

`python -m vst_vla.viz.screenshot FILE.rrd OUT.png [--size 1280x800] [--scale 0.5]` runs
`rerun FILE --screenshot-to OUT.png --renderer vulkan` on a private X display and, with `--scale`,
shrinks the PNG (the viewer writes it at twice the window size). Needs the Debian packages `xvfb`,
`mesa-vulkan-drivers` and `libvulkan1` (`scripts/run.sh` installs them when missing).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAVED = "Screenshot saved"


class ViewerError(RuntimeError):
    """The viewer did not write a screenshot (the message holds the end of its log)."""


def rerun_executable() -> str:
    local = Path(sys.executable).with_name("rerun")  # ships with rerun-sdk, also when the venv is not on PATH
    exe = str(local) if local.is_file() else shutil.which("rerun")
    if exe is None:
        raise ViewerError("no `rerun` executable: install rerun-sdk")
    return exe


def _park_pointer(display: str, x: int, y: int) -> None:
    """Move the X pointer off the window: Xvfb starts it mid-screen, where the viewer shows a hover tooltip."""
    lib = ctypes.util.find_library("X11")
    if lib is None:
        return
    x11 = ctypes.CDLL(lib)
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x11.XDefaultRootWindow.restype = ctypes.c_ulong
    x11.XWarpPointer.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong] + [ctypes.c_int] * 2 + \
        [ctypes.c_uint] * 2 + [ctypes.c_int] * 2
    x11.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    dpy = x11.XOpenDisplay(display.encode())
    if not dpy:
        return
    x11.XWarpPointer(dpy, 0, x11.XDefaultRootWindow(dpy), 0, 0, 0, 0, x, y)
    x11.XSync(dpy, 0)
    x11.XCloseDisplay(dpy)


def _start_xvfb(width: int, height: int) -> tuple[subprocess.Popen, str]:
    """Xvfb on a free display number, twice the window's size so the parked pointer is outside the window."""
    if shutil.which("Xvfb") is None:
        raise ViewerError("Xvfb is missing: apt-get install xvfb mesa-vulkan-drivers libvulkan1")
    read_fd, write_fd = os.pipe()  # -displayfd: Xvfb picks a free display and writes its number here
    # -noreset: otherwise the server resets, pointer back mid-screen, when the pointer-parking client leaves
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{2 * width}x{2 * height}x24",
                             "-nolisten", "tcp", "-noreset"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        raise ViewerError("Xvfb did not start")
    return proc, f":{number}"


def screenshot(rrd: str | Path, out: str | Path, size: tuple[int, int] = (1024, 768), timeout: float = 120.0,
               scale: float = 1.0) -> Path:
    """Open `rrd` in the Rerun viewer under a private Xvfb and save what it shows to `out` (PNG)."""
    rrd, out = Path(rrd), Path(out)
    if not rrd.is_file():
        raise FileNotFoundError(rrd)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    width, height = size
    xvfb, display = _start_xvfb(width, height)
    try:
        _park_pointer(display, 2 * width - 1, 2 * height - 1)
        env = {**os.environ, "DISPLAY": display, "WAYLAND_DISPLAY": "", "RUST_BACKTRACE": "0",
               "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR") or tempfile.mkdtemp(prefix="xdg-")}
        cmd = [rerun_executable(), str(rrd), "--screenshot-to", str(out), "--renderer", "vulkan",
               "--window-size", f"{width}x{height}", "--hide-welcome-screen"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            log = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            log = f"timed out after {timeout:.0f}s\n{err.stdout or ''}{err.stderr or ''}"
    finally:
        xvfb.kill()
        xvfb.wait()
    # rerun 0.33 panics while quitting after a screenshot (exit 102): the saved file, not the status, tells.
    if SAVED not in log or not out.is_file():
        raise ViewerError(f"the viewer wrote no screenshot of {rrd}:\n{log[-3000:]}")
    if scale != 1.0:
        from PIL import Image

        with Image.open(out) as im:
            im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS).save(
                out, optimize=True)
    print(f"{out} ({time.perf_counter() - t0:.1f}s in the viewer)")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rrd")
    ap.add_argument("out")
    ap.add_argument("--size", default="1280x800", help="viewer window size in points")
    ap.add_argument("--scale", type=float, default=0.5, help="resize factor for the written PNG")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    screenshot(args.rrd, args.out, (w, h), scale=args.scale)


if __name__ == "__main__":
    main()
