"""Decode one untrusted image in a throwaway process (run by ``safety.decode``, never imported).

stdin: the image bytes. argv: max_pixels, then the allowed formats. stdout: ``W H\\n`` then the
raw RGB bytes. Exit 3 with the reason on stderr when the image is refused. The parent sets the
CPU-time and memory limits before this starts: a decode that exceeds them is killed.
"""
import io
import sys
import warnings

from PIL import Image, UnidentifiedImageError


def main() -> int:
    max_pixels, mode, formats = int(sys.argv[1]), sys.argv[2], tuple(sys.argv[3:])
    data = sys.stdin.buffer.read()
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=formats)
            if img.size[0] * img.size[1] > max_pixels:
                sys.stderr.write(f"too_many_pixels:{img.size[0]}x{img.size[1]}>{max_pixels}")
                return 3
            img.load()
            rgb = img.convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        sys.stderr.write("decompression_bomb")
        return 3
    except UnidentifiedImageError:
        sys.stderr.write(f"format_not_allowed:expected {'/'.join(formats)}")
        return 3
    except (OSError, ValueError, SyntaxError, EOFError):
        sys.stderr.write("corrupt_image")
        return 3
    out = sys.stdout.buffer
    out.write(f"{rgb.width} {rgb.height}\n".encode())
    out.write(rgb.tobytes())
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
