"""Bad inputs for the ``slimkit`` console script (``env``, ``demo``)."""

from __future__ import annotations

import os

import torch
from bad_input_harness import BadInput, file_at, folder_at, output_of

ROWS: list[BadInput] = [
    BadInput("unknown-subcommand", ["slimkit", "frobnicate"], expect="invalid choice"),
    BadInput("no-subcommand", ["slimkit"], expect="required"),
    BadInput("demo-output-is-a-file", ["slimkit", "demo", "--output", "{tmp}/f.txt"],
             expect="f.txt is a file, expected a folder", setup=file_at("f.txt", "not a folder")),
    BadInput("demo-output-under-a-file", ["slimkit", "demo", "--output", "{tmp}/f.txt/out"],
             expect="f.txt is a file, not a folder", setup=file_at("f.txt", "not a folder")),
    BadInput("demo-output-of-another-kind", ["slimkit", "demo", "--output", "{tmp}/run"],
             expect="holds a nm-sparse train output", setup=output_of("nm-sparse train", "run")),
    BadInput("demo-output-not-empty", ["slimkit", "demo", "--output", "{tmp}/notes"],
             expect="is not empty and was not written by slimkit demo", setup=folder_at("notes", "todo.txt")),
    BadInput("demo-steps-zero", ["slimkit", "demo", "--steps", "0"], expect="--steps must be >= 1"),
    BadInput("demo-steps-negative", ["slimkit", "demo", "--steps", "-1", "--output", "{tmp}/out"],
             expect="--steps must be >= 1"),
    BadInput("demo-steps-not-a-number", ["slimkit", "demo", "--steps", "many"], expect="invalid int value"),
    BadInput("demo-device-nonsense", ["slimkit", "demo", "--device", "nonsense", "--output", "{tmp}/out"],
             expect="unknown device"),
]

if not torch.cuda.is_available():
    ROWS.append(BadInput("demo-device-cuda-without-cuda", ["slimkit", "demo", "--device", "cuda", "--output", "{tmp}/o"],
                         expect="CUDA is not available"))

if os.path.isdir("/proc/self") and not os.access("/proc/self", os.W_OK):  # unwritable even for root
    ROWS.append(BadInput("demo-output-unwritable", ["slimkit", "demo", "--output", "/proc/self/slimkit-demo"],
                         expect="cannot write to /proc/self/slimkit-demo: permission denied"))
