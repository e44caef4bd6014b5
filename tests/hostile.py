"""Hostile inputs for the security tests, made here rather than stored as files.

``scan_bomb``: a progressive JPEG whose thousands of tiny AC refinement scans each walk every
block of a 2048x2048 image: tens of kilobytes that take seconds of CPU to decode (about 2 ms
per scan here), the "scan bomb" of the security probe.
"""
import struct


class Bits:
    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc, self.n = 0, 0

    def flush(self):
        while self.n:
            self.put(1, 1)
        return bytes(self.out)


def seg(marker, body):
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def scan_bomb(side=2048, scans=20000):
    blocks = (side // 8) ** 2
    out = bytearray(b"\xff\xd8")
    out += seg(0xDB, bytes([0]) + bytes([1] * 64))  # DQT
    out += seg(0xC2, struct.pack(">BHHB", 8, side, side, 1) + bytes([1, 0x11, 0]))  # SOF2, 1 component
    out += seg(0xC4, bytes([0x00]) + bytes([1] + [0] * 15) + bytes([0]))  # DC table 0: symbol 0, code '0'
    out += seg(0xC4, bytes([0x10]) + bytes([1] + [0] * 15) + bytes([0xE0]))  # AC table 0: EOB14, code '0'
    dc = Bits()
    for _ in range(blocks):
        dc.put(0, 1)
    out += seg(0xDA, bytes([1, 1, 0x00, 0, 0, 0x00])) + dc.flush()  # DC first, Al=0
    ac = Bits()
    left = blocks
    while left > 0:
        run = min(left, 32767) if left > 16384 else 16384
        ac.put(0, 1)
        ac.put(max(0, run - 16384), 14)
        left -= run
    data = ac.flush()
    out += seg(0xDA, bytes([1, 1, 0x00, 1, 63, 0x01])) + data  # AC first, Al=1
    refine = seg(0xDA, bytes([1, 1, 0x00, 1, 63, 0x10])) + data  # AC refinement Ah=1 Al=0
    out += refine * scans
    out += b"\xff\xd9"
    return bytes(out)
