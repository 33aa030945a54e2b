# usage: python scratch/sweep.py VARIANTS DEVICE PARALLEL TIMEOUT [extra-json-merged-into-each]
import os, subprocess, sys, time, json
here = os.path.dirname(os.path.abspath(__file__))
os.chdir(here)
env = dict(os.environ, PYTHONPATH=os.path.abspath("../.."), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
os.makedirs("res", exist_ok=True); os.makedirs("logs", exist_ok=True)
jobs = [l.split(None, 1) for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
dev, par, deadline = sys.argv[2], int(sys.argv[3]), time.time() + float(sys.argv[4])
running = []
def reap(block):
    for p, n in list(running):
        if p.poll() is not None or block:
            if p.poll() is None: p.kill()
            running.remove((p, n))
            out = open(f"logs/{n}.log").read().splitlines()
            print(next((l for l in out if l.startswith("RESULT")), f"FAIL {n}: " + " | ".join(out[-2:])), flush=True)
while jobs and time.time() < deadline:
    if len(running) < par:
        n, c = jobs.pop(0)
        running.append((subprocess.Popen([sys.executable, "variants.py", n, c.strip(), "res", dev], env=env,
                         stdout=open(f"logs/{n}.log", "w"), stderr=subprocess.STDOUT), n))
    else:
        time.sleep(1); reap(False)
while running and time.time() < deadline:
    time.sleep(1); reap(False)
reap(True)
if os.environ.get("OUT"):
    subprocess.run(["tar", "czf", os.path.join(os.environ["OUT"], "res.tgz"), "res", "logs"])
