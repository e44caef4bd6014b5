"""Decode one untrusted image in a throwaway process (run by ``safety.decode``, never imported).

stdin: the image bytes. argv: max_pixels, then the allowed formats. stdout: ``W H CPU\\n`` (CPU:
the seconds this process used) then the raw RGB bytes. Exit 3 with the reason on stderr (then
``\\n#cpu=`` and the seconds) when the image is refused. The parent sets the
CPU-time and memory limits before this starts: a decode that exceeds them is killed.
"""
import io
import resource
import sys
import warnings

from PIL import Image, UnidentifiedImageError


def cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def refuse(reason: str) -> int:
    sys.stderr.write(f"{reason}\n#cpu={cpu_s():.4f}")
    return 3


def main() -> int:
    max_pixels, mode, formats = int(sys.argv[1]), sys.argv[2], tuple(sys.argv[3:])
    data = sys.stdin.buffer.read()
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
            if img.size[0] * img.size[1] > max_pixels:
                return refuse(f"too_many_pixels:{img.size[0]}x{img.size[1]}>{max_pixels}")
            img.load()
            rgb = img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return refuse("decompression_bomb")
    except UnidentifiedImageError:
        return refuse(f"format_not_allowed:expected {'/'.join(formats)}")
    except (OSError, ValueError, SyntaxError, EOFError):
        return refuse("corrupt_image")
    out = sys.stdout.buffer
    out.write(f"{rgb.width} {rgb.height} {cpu_s():.4f}\n".encode())
    out.write(rgb.tobytes())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
