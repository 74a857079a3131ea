"""Video files from rendered RGB frames: MP4 (H.264, yuv420p) or animated GIF.

MP4 goes through the ffmpeg binary that the `imageio-ffmpeg` wheel ships; GIF through Pillow (each frame gets
its own adaptive 256-colour palette). The format follows the file suffix. A file is written under a
temporary name next to its target and renamed when complete, so an interrupted run leaves no half video.

Pillow stores consecutive identical GIF frames as one frame shown for their summed duration, so a GIF can hold
fewer frames than were appended; its total duration is still frames / fps (see `video_info`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("mp4", "gif")


class VideoError(ValueError):
    """Bad frames, an unknown format, or a format whose encoder is not installed."""


def mp4_available() -> bool:
    """True when MP4 can be written (the imageio-ffmpeg package and its ffmpeg binary are present)."""
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).exists()
    except (ImportError, RuntimeError):
        return False


def default_format() -> str:
    """"mp4" when it can be written, else "gif"."""
    return "mp4" if mp4_available() else "gif"


def _format_of(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise VideoError(f"video file {path} must end in one of {['.' + f for f in FORMATS]}, got {path.suffix!r}")
    return fmt


class VideoWriter:
    """Streams RGB frames of one size into `path` (.mp4 or .gif) at `fps` frames per second.

    append(frame (H, W, 3) uint8) per frame, then close() (or use as a context manager; an exception inside
    the block discards the file). MP4 needs even H and W (yuv420p).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 5.0) -> None:
        self.path = Path(path)
        self.format = _format_of(self.path)
        if not (np.isfinite(fps) and fps > 0):
            raise VideoError(f"fps must be a positive number, got {fps}")
        if self.format == "mp4" and not mp4_available():
            raise VideoError("writing MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
                             "or write a .gif")
        self.fps = float(fps)
        self.frames = 0
        self._size: tuple[int, int] | None = None   # (H, W)
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._mp4: Any = None
        self._gif: list[Any] = []
        self._closed = False

    def append(self, frame: np.ndarray) -> None:
        """Add one frame: (H, W, 3) uint8 RGB, the same size as the first one."""
        if self._closed:
            raise VideoError(f"{self.path} is already closed")
        img = np.asarray(frame)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise VideoError(f"a video frame must be (H, W, 3) uint8 RGB, got shape {img.shape} dtype {img.dtype}")
        size = (int(img.shape[0]), int(img.shape[1]))
        if self._size is None:
            self._start(size)
        elif size != self._size:
            raise VideoError(f"frame {self.frames} of {self.path} is {size[1]}x{size[0]}, the video is "
                             f"{self._size[1]}x{self._size[0]}")
        if self._mp4 is not None:
            self._mp4.send(np.ascontiguousarray(img))
        else:
            from PIL import Image

            self._gif.append(Image.fromarray(img, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256))
        self.frames += 1

    def _start(self, size: tuple[int, int]) -> None:
        h, w = size
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "mp4":
            if h % 2 or w % 2:
                raise VideoError(f"MP4 (yuv420p) needs an even width and height, got {w}x{h}; write a .gif")
            import imageio_ffmpeg

            self._mp4 = imageio_ffmpeg.write_frames(str(self._tmp), (w, h), fps=self.fps, quality=7,
                                                    macro_block_size=2, output_params=["-f", "mp4"])
            self._mp4.send(None)  # start ffmpeg
        self._size = size

    def close(self) -> Path:
        """Finish the file and move it into place; returns its path. VideoError if no frame was appended."""
        if self._closed:
            return self.path
        self._closed = True
        if self.frames == 0:
            raise VideoError(f"no frames were appended to {self.path}; nothing was written")
        try:
            if self._mp4 is not None:
                self._mp4.close()
            else:
                # GIF frame durations are whole centiseconds in the file; Pillow takes milliseconds.
                self._gif[0].save(self._tmp, format="GIF", save_all=True, append_images=self._gif[1:],
                                  duration=int(round(1000.0 / self.fps)), loop=0, optimize=False)
                self._gif = []
            os.replace(self._tmp, self.path)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        """Discard the file."""
        self._closed = True
        if self._mp4 is not None:
            try:
                self._mp4.close()
            except Exception:  # noqa: BLE001 - ffmpeg may already have failed; the file is being discarded anyway
                pass
        self._gif = []
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 5.0) -> Path:
    """Write frames (each (H, W, 3) uint8) to `path` (.mp4 or .gif) at `fps`; returns the path."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.append(frame)
    return writer.path


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds: frames stored, total duration (s), width and height (px)."""

    frames: int
    duration_s: float
    width: int
    height: int


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Read back a video written here (decodes it: also checks that it is a valid file of its format)."""
    path = Path(path)
    fmt = _format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"no video at {path}")
    if fmt == "gif":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.format != "GIF":
                    raise VideoError(f"{path} is a {im.format} file, not a GIF")
                width, height = im.size
                frames, total_ms = 0, 0
                for i in range(im.n_frames):
                    im.seek(i)
                    im.load()
                    frames += 1
                    total_ms += int(im.info.get("duration", 0))
        except (UnidentifiedImageError, OSError, EOFError) as exc:
            raise VideoError(f"{path} is not a readable GIF: {exc}") from exc
        return VideoInfo(frames, total_ms / 1000.0, width, height)
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = reader.__next__()
        width, height = meta["size"]
        frames = sum(1 for _ in reader)
    except (RuntimeError, OSError, StopIteration) as exc:
        raise VideoError(f"{path} is not a readable MP4: {exc}") from exc
    fps = float(meta.get("fps") or 0.0)
    return VideoInfo(frames, frames / fps if fps > 0 else float(meta.get("duration") or 0.0), int(width), int(height))
