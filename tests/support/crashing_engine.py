#!/usr/bin/env python3
"""A document engine that dies of SIGSEGV on any request holding the bytes
CRASH-ME and hands every other request to the real `y-redis doc-helper`
(argv[1] is the y-redis binary). The tests use it to exercise crash
containment with a real crash, since the real engine refuses every input
known to crash yrs before yrs sees it."""
import os
import signal
import struct
import subprocess
import sys

real = subprocess.Popen([sys.argv[1], "doc-helper"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
while True:
    header = stdin.read(4)
    if len(header) < 4:
        break
    body = stdin.read(struct.unpack("<I", header)[0])
    if b"CRASH-ME" in body:
        os.kill(os.getpid(), signal.SIGSEGV)
    real.stdin.write(header + body)
    real.stdin.flush()
    reply_header = real.stdout.read(4)
    reply = real.stdout.read(struct.unpack("<I", reply_header)[0])
    stdout.write(reply_header + reply)
    stdout.flush()
