import sys, torch
sys.path.insert(0, '/work/main/src')
import dataset, model, utils, run
D, params, prompt_fmt = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(D + '/wiki.txt', encoding='utf-8').read()
ds = dataset.CharCorruptionDataset(text, 128)
class A: variant='vanilla'; bottleneck_dim=32; plain=False
g = run.build_model(A, ds.vocab_size); g.load_state_dict(torch.load(params, weights_only=True)); g.eval()
rows = [l.split('\t') for l in open(D + '/birth_dev.tsv', encoding='utf-8').read().splitlines()]
ok = 0; outs = []
for q, place in rows:
    name = q[len('Where was '):-len(' born?')]
    p = prompt_fmt.replace('NAME', name).replace('MASK', dataset.MASK_CHAR if hasattr(dataset, 'MASK_CHAR') else '\u2047')
    x = torch.tensor([ds.stoi[c] for c in p])[None]
    y = utils.sample(g, x, 24, sample=False)[0]
    out = ''.join(ds.itos[int(i)] for i in y)[len(p):]
    ok += out.startswith(place); outs.append(out[:20])
print(f"{ok}/{len(rows)}", outs[:5])
