"""`comfyfleet completion [bash|zsh|fish|tcsh|powershell]`: the shell code that completes
`comfyfleet` commands and options (argcomplete). Load it in the shell's start file:

    eval "$(comfyfleet completion bash)"        # ~/.bashrc
    eval "$(comfyfleet completion zsh)"         # ~/.zshrc
    comfyfleet completion fish | source         # ~/.config/fish/config.fish
"""

from __future__ import annotations

import argparse
import os

SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "completion", help="print the shell code that completes comfyfleet commands",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("shell", nargs="?", choices=SHELLS, help="default: from $SHELL")
    parser.set_defaults(func=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    shell = args.shell or os.path.basename(os.environ.get("SHELL", "")) or "bash"
    if shell not in SHELLS:
        shell = "bash"
    print(argcomplete.shellcode(["comfyfleet"], shell=shell), end="")
    return 0
