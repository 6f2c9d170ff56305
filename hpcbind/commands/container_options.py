"""The options ``exec``, ``run`` and ``shell`` share (Apptainer's names and meanings)."""

from __future__ import annotations

import argparse

from hpcbind.launch import RunOptions


def configure(parser: argparse.ArgumentParser, command: bool) -> None:
    add = parser.add_argument
    add("-B", "--bind", action="append", default=[], metavar="SRC[:DST[:ro|rw]]",
        help="bind a host path into the container (repeatable, comma-separated lists)")
    add("-c", "--contain", action="store_true",
        help="minimal /dev and no host $HOME, /tmp or current directory")
    add("-C", "--containall", action="store_true",
        help="--contain plus --cleanenv and a private IPC namespace")
    add("-H", "--home", default="", metavar="SRC[:DST]", help="home directory to bind")
    add("--no-home", action="store_true", help="do not bind the home directory")
    add("--pwd", default="", metavar="DIR", help="initial working directory in the container")
    add("-e", "--cleanenv", action="store_true",
        help="do not pass the host environment (except TERM and proxies)")
    add("--env", action="append", default=[], metavar="K=V",
        help="set an environment variable in the container (repeatable, comma lists)")
    add("--env-file", action="append", default=[], metavar="FILE",
        help="set environment variables from a file of K=V lines")
    add("--nv", action="store_true", help="NVIDIA GPUs: bind the host driver and devices")
    add("--rocm", action="store_true", help="AMD GPUs: bind the host ROCm driver and devices")
    add("--ib", action="store_true",
        help="InfiniBand/RoCE/Slingshot/Omni-Path: bind devices and verbs providers")
    add("--device", action="append", default=[], metavar="VENDOR/CLASS=NAME",
        help="apply a CDI device from /etc/cdi or /var/run/cdi")
    add("-v", "--verbose", action="store_true", help="say what is mounted and why")
    add("image", metavar="IMAGE", help="a SIF file, a squashfs file or a sandbox directory")
    if command:
        add("argv", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")
    else:
        add("args", nargs=argparse.REMAINDER, metavar="ARGS")


def run_options(args: argparse.Namespace, argv: tuple[str, ...], exec_hint: str = "") -> RunOptions:
    return RunOptions(
        image=args.image, argv=argv, binds=tuple(args.bind), contain=args.contain,
        containall=args.containall, home=args.home, no_home=args.no_home, pwd=args.pwd,
        cleanenv=args.cleanenv, env=tuple(args.env), env_files=tuple(args.env_file),
        nv=args.nv, rocm=args.rocm, ib=args.ib, devices=tuple(args.device),
        exec_hint=exec_hint, verbose=args.verbose,
    )
