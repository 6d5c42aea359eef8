# The Verilog driver: run inside the sandbox as `python -I -S -c <this file's text>` with its request on stdin
# (verilog.py reads it as text; see verilog.py's docstring for the steps and what they defend).
#
# Not a module of the package: it runs with the standard library only (-I -S: no site-packages, no trl_ib), and at
# its top level it reads stdin, writes into the working directory and execs vvp, so importing it in the host
# process is refused.

import marshal
import os
import re
import secrets
import subprocess
import sys

if __name__ != "__main__":
    raise ImportError("_verilog_driver.py runs only in the sandbox, as `python -I -S -c <its text>`")

design, testbench, top, nonce, iverilog, vvp = marshal.loads(sys.stdin.buffer.read())
for name, source in (("design.sv", design), ("testbench.sv", testbench)):
    with open(name, "wb") as file:
        file.write(source)


def refuse(what, message):
    os.write(2, f"{nonce} {what}: {message}\n".encode())
    os._exit(0)


def step(what, argv):
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        first_error = (done.stdout.decode("utf-8", "replace").strip().splitlines() or ["(no message)"])[0]
        refuse(what, first_error + "\n" + done.stdout.decode("utf-8", "replace"))


# The design is preprocessed alone, and that text is what both compiles see: its `ifdef`s cannot test the
# testbench's macros (VerilogEval v2 testbenches `define OK), so the full run compiles the design checked alone.
step("compile error", [iverilog, "-g2012", "-E", "-o", "design.pp.sv", "design.sv"])
os.replace("design.pp.sv", "design.sv")  # its lines keep their numbers (dropped lines stay as blank ones)
with open("design.sv", encoding="utf-8", errors="replace") as file:
    code = re.sub(r'"(?:\\.|[^"\\\n])*"|//[^\n]*|/\*.*?\*/', " ", file.read(), flags=re.S)  # no strings, comments
directive = re.search(
    r"`\s*(\w*)", re.sub(r"`(timescale|default_nettype|resetall|celldefine|endcelldefine)\b", "", code)
)
if directive:  # e.g. a macro that pastes an `ifdef together: only inert directives may survive preprocessing
    refuse("compile error", f"the preprocessed design still holds the directive `{directive.group(1)}")
task = re.search(r"\$(finish|stop|fatal|exit)\w*", code)
if task:  # the testbench reports in a `final` block, which runs on any $finish: a design must not end the run
    refuse("the design ends the simulation", task.group(0))
step("compile error", [iverilog, "-g2012", *top, "-o", "sim.vvp", "testbench.sv", "design.sv"])
step("the design does not stand alone", [iverilog, "-g2012", "-t", "null", "design.sv"])
os.remove("design.sv")
os.remove("testbench.sv")
hidden = os.path.join(os.getcwd(), secrets.token_hex(16))
os.mkdir(hidden, 0o700)
os.rename("sim.vvp", os.path.join(hidden, "sim.vvp"))
os.chmod(hidden, 0o100)  # traverse only: the program is reachable by its unknown name alone
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin held this request, testbench and nonce included
os.execv(vvp, [vvp, "-n", os.path.join(hidden, "sim.vvp")])
