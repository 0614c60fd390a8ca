import sys, time
from sftnb.config import load_config
from sftnb.lm.models import load_model
from sftnb.tasks import builtin_task, score
from sftnb.sft import train
from sftnb.evaluate import answer_questions
n = int(sys.argv[1]); mnt = int(sys.argv[2]); lr = float(sys.argv[3])
cfg = load_config("params/embedded.yaml")
model, tok = load_model("smollm2-135m", device="cpu", dtype="float32")
task = builtin_task("math", n, 40, 0, mnt)
t = time.time()
rep = train(model, tok, [(e.prompt, e.target) for e in task.train], cfg.sft, 0, learning_rate=lr, progress=False)
outs = answer_questions(model, tok, [e.prompt for e in task.test], task.max_new_tokens, 16384, False, desc="m")
outs = [o.split("<|question|>")[0] for o in outs]
s = score("gsm8k", outs, [e.target for e in task.test])["accuracy"]
print(n, mnt, lr, "acc", sum(s)/len(s), "loss", rep.losses[0], rep.losses[-1], "s", round(time.time()-t,1))
print(outs[:3])
