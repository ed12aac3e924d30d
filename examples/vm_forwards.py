"""Automation example: right after your tooling creates a VM, give it SSH and RDP forwards; when it deletes the VM,
remove them. Safe to run again: ensure_forward only creates what is missing and retargets a moved machine.

    LABGATE_URL=http://gw:3000 LABGATE_TOKEN=lg_... python examples/vm_forwards.py create win1 10.9.0.7
    LABGATE_URL=http://gw:3000 LABGATE_TOKEN=lg_... python examples/vm_forwards.py delete win1
"""

import sys

from labgate.client import Client, LabgateError

PORTS = {"ssh": 22, "rdp": 3389}


def create(lg: Client, name: str, address: str) -> None:
    for protocol, port in PORTS.items():
        fwd = lg.ensure_forward(name, address, port, kind="windows", description=f"{protocol} to {name}")
        print(f"{name} {protocol}: {fwd.external_address}:{fwd.external_port}")


def delete(lg: Client, name: str) -> None:
    print(f"{name}: removed {lg.remove_machine_forwards(name)} forward(s)")


def main(argv: list[str]) -> int:
    try:
        with Client() as lg:  # LABGATE_URL and LABGATE_TOKEN from the environment
            if argv[:1] == ["create"] and len(argv) == 3:
                create(lg, argv[1], argv[2])
            elif argv[:1] == ["delete"] and len(argv) == 2:
                delete(lg, argv[1])
            else:
                print(__doc__, file=sys.stderr)
                return 2
    except LabgateError as exc:
        print(f"error: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
