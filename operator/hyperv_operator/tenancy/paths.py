r"""Windows paths as the host will read them, and "is this path inside that root".

A path a tenant writes is sent to the Hyper-V host, where Win32 normalises it before use. Deciding
on the raw string would let `\\FS\VMSHARE2` pass as inside `\\FS\VMSHARE`, or `\\FS\VMSHARE\a\..\..`
climb out. So the path is parsed into a root and segments the way Win32 resolves it, and anything
whose meaning on the host is not certain from the text alone is refused rather than guessed:

- device and verbatim namespaces (`\\.\pipe\x`, `\\?\C:\x`, `\??\`): they bypass normalisation;
- `..` segments (resolution depends on what is on disk for reparse points; never needed here);
- drive-relative (`C:x`), rooted-relative (`\x`) and relative paths (depend on the current dir);
- 8.3 short-name spellings (`VMSHAR~1`): an alias that may name any folder, depending on the volume;
- `:` after the drive (NTFS alternate data streams, `x::$DATA`, `dir::$INDEX_ALLOCATION`);
- segments ending in `.` or space (Win32 strips them, so two spellings name one file);
- characters NTFS forbids in names (`<>:"|?*`, control characters) and DOS device names (`NUL`,
  `COM1.txt`...), which Win32 maps to devices wherever they appear as the last segment.

Everything else NTFS allows is taken literally (`$`, `#`, `~` not followed by a digit, spaces
inside a name). `.` segments and repeated or trailing separators are removed as Win32 does, and `/`
is a separator like `\`. Segments are compared case-insensitively with a per-character simple
upper-case mapping (NTFS compares names through its upcase table, not with full case folding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FORBIDDEN_CHARS = re.compile(r'[<>:"|?*\x00-\x1f]')
_SHORT_NAME = re.compile(r"~[0-9]")
_DEVICE_NAMES = {
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
    *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10)),
    *(f"COM{c}" for c in "\u00b9\u00b2\u00b3"), *(f"LPT{c}" for c in "\u00b9\u00b2\u00b3"),
}
_SERVER = re.compile(r"^[A-Za-z0-9_-]([A-Za-z0-9._-]*[A-Za-z0-9_-])?$")


class PathRefused(ValueError):
    """The path cannot be used: its meaning on the host is not certain, or NTFS forbids it."""


def _upper(segment: str) -> str:
    # Simple (one-to-one) upper-case mapping per character, like NTFS's upcase table: "ß" stays
    # "ß" (full case mapping would turn it into "SS" and match a different name).
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in segment)


@dataclass(frozen=True)
class WindowsPath:
    """A parsed absolute path: `root` is ("UNC", server, share) or ("DRIVE", "C:")."""

    text: str
    root: tuple[str, ...]
    segments: tuple[str, ...]

    @property
    def key(self) -> tuple[str, ...]:
        """What comparisons use: root and segments, upper-cased."""
        return tuple(_upper(p) for p in (*self.root, *self.segments))

    def is_inside(self, other: WindowsPath) -> bool:
        """True if self is `other` or below it (segment-wise, case-insensitive)."""
        mine, theirs = self.key, other.key
        return mine[: len(theirs)] == theirs

    @property
    def parent(self) -> WindowsPath:
        if not self.segments:
            return self
        return WindowsPath(self.text, self.root, self.segments[:-1])

    def __str__(self) -> str:
        head = f"\\\\{self.root[1]}\\{self.root[2]}" if self.root[0] == "UNC" else self.root[1]
        return "\\".join((head, *self.segments))


def _check_segment(segment: str, original: str) -> None:
    if segment == "..":
        raise PathRefused(f"{original!r}: '..' segments are not allowed")
    if _FORBIDDEN_CHARS.search(segment):
        bad = _FORBIDDEN_CHARS.search(segment)
        char = bad.group(0) if bad else "?"
        if char == ":":
            raise PathRefused(
                f"{original!r}: ':' after the drive names an NTFS alternate data stream; not allowed"
            )
        raise PathRefused(f"{original!r}: the character {char!r} is not allowed in Windows file names")
    if segment.endswith((".", " ")):
        raise PathRefused(
            f"{original!r}: segment {segment!r} ends with '.' or a space, which Windows strips (ambiguous)"
        )
    if _SHORT_NAME.search(segment):
        raise PathRefused(
            f"{original!r}: segment {segment!r} looks like an 8.3 short name (~N), which may alias "
            "another folder; use the long name"
        )
    stem = segment.split(".", 1)[0].rstrip(" ")
    if _upper(stem) in _DEVICE_NAMES:
        raise PathRefused(f"{original!r}: {segment!r} is a DOS device name")


def parse(path: str) -> WindowsPath:
    """Parse an absolute local (`C:\\x`) or UNC (`\\\\server\\share\\x`) path, or raise PathRefused."""
    if not path or not path.strip():
        raise PathRefused("empty path")
    text = path.replace("/", "\\")
    if text.startswith(("\\\\?\\", "\\\\.\\", "\\??\\")) or text in ("\\\\?", "\\\\."):
        raise PathRefused(f"{path!r}: device and verbatim paths (\\\\.\\, \\\\?\\) are not allowed")
    if text.startswith("\\\\"):
        parts = [p for p in text[2:].split("\\") if p not in ("", ".")]
        if len(parts) < 2:
            raise PathRefused(f"{path!r}: a UNC path needs \\\\server\\share")
        server, share, rest = parts[0], parts[1], parts[2:]
        if not _SERVER.match(server):
            raise PathRefused(f"{path!r}: {server!r} is not a plain server name")
        _check_segment(share, path)
        for segment in rest:
            _check_segment(segment, path)
        return WindowsPath(path, ("UNC", server, share), tuple(rest))
    if len(text) >= 2 and text[1] == ":" and text[0].isascii() and text[0].isalpha():
        if len(text) > 2 and text[2] != "\\":
            raise PathRefused(f"{path!r}: drive-relative paths (C:x) are not allowed; use C:\\x")
        if len(text) == 2:
            raise PathRefused(f"{path!r}: a bare drive is drive-relative; use {text}\\")
        parts = [p for p in text[3:].split("\\") if p not in ("", ".")]
        for segment in parts:
            _check_segment(segment, path)
        return WindowsPath(path, ("DRIVE", text[0].upper() + ":"), tuple(parts))
    raise PathRefused(f"{path!r}: not an absolute local (C:\\...) or UNC (\\\\server\\share\\...) path")


def inside_any(path: WindowsPath, roots: tuple[WindowsPath, ...]) -> bool:
    return any(path.is_inside(root) for root in roots)
