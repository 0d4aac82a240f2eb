"""``mpcache trace html``: a transcript as one self-contained HTML page (no network).

The page draws three party lanes (P0, P1, P2) left to right in round order, one arrow per
message (sender lane to receiver lane; online solid, offline dashed; coloured by what the
receiver learns), the accounting scopes as bands above the lanes, and a totals panel per
scope.  Hovering an arrow shows its tag, round, bytes, dtype and shape, and the tag's
narration and "what the receiver learns" from :func:`mpcache.apps.explain.lookup` (the same
table ``mpcache explain`` prints); a click pins it and highlights every message with the
same tag (``page.html#pin=N`` opens with message N pinned).  Everything is inline (data
as JSON, the script and the style sheet), so the file opens offline and can be mailed or
archived.

Layout (design choice): the x axis is the round stamp every message carries (Lamport
rounds, as the accounting counts them); offline messages (dealer randomness, PRG keys)
are drawn in the round before which their receiver holds them.  Within a round each
message gets its own column, offline first, then by the sender's program order.  Share
values are never written to the page, even from a transcript recorded with values.

The page records what it drew: ``document.title`` ends with ``[N arrows]`` and the
``<body>`` gets ``data-arrows``/``data-messages`` attributes, which the browser test
(tests/teach/test_teach_html.py) compares with the transcript's message count.
"""
from __future__ import annotations

import html
import json

from .trace import COUNTER_KEYS, Trace

#: A page with more messages than this is refused (the browser would crawl); pass
#: ``scope=`` to draw one part of a large run.
MAX_MESSAGES = 60_000


def messages(trace: Trace, scope: str | None = None) -> list:
    """One dict per message of the session: the sender's ``send`` event joined with the
    receiver's ``recv`` event on (sender, receiver, seq).  A message seen by one side only
    (a failed run, or a party's file missing from a merged trace) is kept with what that
    side recorded."""
    inside = (lambda s: True) if not scope else (
        lambda s: s == scope or s.startswith(scope + "/"))
    msgs: dict = {}
    for t in trace.transcripts:
        for e in t.events:
            key = (e.sender, e.receiver, e.seq)
            m = msgs.setdefault(key, {"sender": e.sender, "receiver": e.receiver,
                                      "seq": e.seq})
            if e.direction == "send":
                m.update(tag=e.tag, scope=e.scope, nbytes=e.nbytes, stamp=e.stamp,
                         offline=e.offline, dtype=e.dtype, shape=list(e.shape),
                         send_clock=e.clock, send_step=e.step)
            else:
                m["recv_clock"] = e.clock
                m["recv_step"] = e.step
                for k, v in (("tag", e.tag), ("scope", e.scope), ("nbytes", e.nbytes),
                             ("stamp", e.stamp), ("offline", e.offline),
                             ("dtype", e.dtype), ("shape", list(e.shape))):
                    m.setdefault(k, v)
    out = [m for m in msgs.values() if inside(m["scope"])]
    for m in out:
        if m["offline"]:
            # offline: drawn in the round before which the receiver holds it
            clock = m.get("recv_clock", m.get("send_clock", 0))
            m["round"] = clock + 1
        else:
            m["round"] = m["stamp"]
        m["order"] = m.get("send_step", m.get("recv_step", 0))
    out.sort(key=lambda m: (m["round"], not m["offline"], m["sender"], m["order"],
                            m["receiver"]))
    return out


def _scope_runs(msgs: list, path: str) -> list:
    """Maximal runs [first, last] of message columns whose scope is ``path`` or nested."""
    runs, start = [], None
    for i, m in enumerate(msgs):
        inside = m["scope"] == path or m["scope"].startswith(path + "/")
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            runs.append([start, i - 1])
            start = None
    if start is not None:
        runs.append([start, len(msgs) - 1])
    return runs


def view_data(trace: Trace, title: str = "", scope: str | None = None) -> dict:
    """Everything the page draws, as plain JSON-able data (no share values)."""
    from .apps.explain import LEARNS, lookup
    from .accounting import scope_rounds
    msgs = messages(trace, scope)
    if len(msgs) > MAX_MESSAGES:
        raise ValueError(f"{len(msgs):,} messages is more than one page can draw "
                         f"({MAX_MESSAGES:,}): pick a scope or a session")
    tags, tag_ix = [], {}
    for m in msgs:
        if m["tag"] not in tag_ix:
            info = lookup(m["tag"])
            tag_ix[m["tag"]] = len(tags)
            tags.append({"tag": m["tag"], "title": info.title, "local": info.local,
                         "kind": info.kind,
                         "learns": LEARNS.get(info.kind, "(not in the tag table: "
                                              "unexplained)"),
                         "why": info.learns, "n": 0, "bytes": 0})
        t = tags[tag_ix[m["tag"]]]
        t["n"] += 1
        t["bytes"] += m["nbytes"]
    ts = trace.transcripts
    paths = sorted({p for t in ts for p in t.scope_paths()
                    if not scope or p == scope or p.startswith(scope + "/")})
    scope_ix = {p: i for i, p in enumerate(paths)}
    scope_ix.setdefault("", len(paths))
    bands = []
    for p in paths:
        for a, b in _scope_runs(msgs, p):
            bands.append([scope_ix[p], p.count("/"), a, b])
    stats = trace.stats
    totals = []
    for p in paths:
        per = [t.scope_counters(p) for t in ts]
        incl = [t.scope_counters(p, inclusive=True) for t in ts]
        totals.append({"scope": p,
                       "bytes": [c["bytes_sent"] for c in per],
                       "incl": [c["bytes_sent"] for c in incl],
                       "msgs": [c["messages_sent"] for c in per],
                       "offline": [c["offline_bytes_sent"] for c in per],
                       "rounds": [c["rounds"] for c in per],
                       "crit": scope_rounds(stats, p) if stats else None})
    whole = [t.totals() for t in ts]
    check = trace.check() if stats else None
    if trace.meta.get("link_check"):      # merged party files: the two ends disagree
        check = (check or []) + list(trace.meta["link_check"])
    rows = [[m["sender"], m["receiver"], tag_ix[m["tag"]], m["nbytes"], m["round"],
             int(m["offline"]), scope_ix.get(m["scope"], len(paths)), m["dtype"],
             m["shape"], m["seq"]] for m in msgs]
    return {
        "title": title or f"session {trace.session}",
        "protocol": trace.protocol, "session": trace.session,
        "parties": len(ts),
        "roles": _roles(trace.protocol, len(ts)),
        "scopes": paths + [""], "tags": tags, "msgs": rows, "bands": bands,
        "totals": totals,
        "whole": {k: [w[k] for w in whole] for k in COUNTER_KEYS},
        "check": None if check is None else check[:20],
        "failed": bool(trace.meta.get("failed")),
        "merged": trace.meta.get("merged"),
    }


def _roles(protocol: str, n: int) -> list:
    if protocol == "add2":
        return ["P0 (share holder)", "P1 (share holder)", "P2 (dealer / helper)"][:n]
    if protocol == "rep3":
        return ["P0 (holds x0, x1)", "P1 (holds x1, x2)", "P2 (holds x2, x0)"][:n]
    return [f"P{i}" for i in range(n)]


def render(traces, title: str = "", scope: str | None = None) -> str:
    """The HTML page for one or more sessions (a list of :class:`Trace`)."""
    if isinstance(traces, Trace):
        traces = [traces]
    views = [view_data(t, title if len(traces) == 1 else
                       f"{title or 'session'} {i}: {t.session}", scope)
             for i, t in enumerate(traces)]
    n = sum(len(v["msgs"]) for v in views)
    page_title = (title or "mpcache transcript") + " [not drawn]"
    blob = json.dumps(views, separators=(",", ":")).replace("</", "<\\/")
    return (_PAGE.replace("@TITLE@", html.escape(page_title))
            .replace("@CSS@", _CSS).replace("@JS@", _JS).replace("@DATA@", blob)
            .replace("@N@", str(n)))


def write_html(traces, path: str, title: str = "", scope: str | None = None) -> int:
    """Write the page to ``path``; returns the number of messages drawn."""
    page = render(traces, title, scope)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    views = traces if isinstance(traces, list) else [traces]
    return sum(len(messages(t, scope)) for t in views)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>@TITLE@</title><style>@CSS@</style></head>
<body data-messages="@N@" data-arrows="0">
<div id="app"></div>
<noscript>This page draws the transcript with inline JavaScript; enable it.</noscript>
<script type="application/json" id="trace-data">@DATA@</script>
<script>@JS@</script>
</body></html>
"""

_CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 color:#1f2937;background:#f8fafc}
header{padding:10px 18px 6px;background:#0f172a;color:#f8fafc}
header h1{font-size:17px;margin:0 0 2px}
header .sub{color:#cbd5e1;font-size:12px}
section.view{margin:10px 14px 18px;background:#fff;border:1px solid #e2e8f0;border-radius:8px;
 box-shadow:0 1px 2px rgba(0,0,0,.05)}
.vhead{padding:8px 12px;border-bottom:1px solid #e2e8f0;display:flex;gap:18px;
 flex-wrap:wrap;align-items:baseline}
.vhead b{font-size:14px}
.ok{color:#15803d;font-weight:600}.bad{color:#b91c1c;font-weight:600}
.legend span{display:inline-flex;align-items:center;margin-right:12px}
.legend i{display:inline-block;width:22px;height:0;border-top:3px solid;margin-right:5px}
.legend i.dash{border-top-style:dashed}
.row{display:flex;gap:0;align-items:stretch}
.scroll{overflow-x:auto;flex:1 1 auto;min-width:0}
.panel{flex:0 0 330px;border-left:1px solid #e2e8f0;padding:8px 12px;font-size:12px;
 background:#fcfcfd;max-height:460px;overflow-y:auto}
.panel h3{margin:2px 0 6px;font-size:13px}
.panel .k{color:#64748b}
.panel p{margin:4px 0}
.panel .learns{background:#f1f5f9;border-left:3px solid #64748b;padding:4px 6px}
svg text{font-family:inherit}
.msg line.vis{stroke-width:1.6}
.msg line.hit{stroke:transparent;stroke-width:7;cursor:pointer}
.msg:hover line.vis,.msg.sel line.vis{stroke-width:3.2}
.dim .msg line.vis{opacity:.12}
.dim .msg.same line.vis{opacity:1}
.band{cursor:pointer}
.band:hover rect{stroke:#0f172a}
table.tot{border-collapse:collapse;margin:6px 12px 12px;font-size:12px}
table.tot th,table.tot td{padding:2px 8px;border-bottom:1px solid #eef2f7;text-align:right;
 white-space:nowrap}
table.tot th{background:#f1f5f9;font-weight:600}
table.tot td.s,table.tot th.s{text-align:left}
table.tot tr.cur td{background:#fef9c3}
table.tot tr{cursor:pointer}
details{margin:0 12px 10px}
.tags td.t{font-family:ui-monospace,Menlo,Consolas,monospace}
"""

_JS = r"""
(function(){
const NS='http://www.w3.org/2000/svg';
const COL={random:'#2563eb',dealer:'#9333ea',output:'#dc2626',key:'#6b7280',shape:'#059669',
 pattern:'#d97706','?':'#111827'};
const KIND={random:'masked (uniform)',dealer:'dealer randomness',output:'revealed output',
 key:'key set-up',shape:'shape only',pattern:'shuffled order pattern','?':'not in tag table'};
const views=JSON.parse(document.getElementById('trace-data').textContent);
const app=document.getElementById('app');
function el(tag,attrs,parent,text){const e=document.createElementNS(NS,tag);
 for(const k in attrs)e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;
 if(parent)parent.appendChild(e);return e;}
function h(tag,attrs,parent,text){const e=document.createElement(tag);
 for(const k in attrs)e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;
 if(parent)parent.appendChild(e);return e;}
function fmt(n){return n.toLocaleString('en-US');}
function hue(s){let x=0;for(const c of s)x=(x*31+c.charCodeAt(0))>>>0;return x%360;}
let drawn=0;
const hd=h('header',{},app);
h('h1',{},hd,'mpcache transcript viewer');
h('div',{class:'sub'},hd,'one arrow per message: sender lane \u2192 receiver lane; '+
 'solid = online, dashed = offline (sent ahead of time); colour = what the receiver '+
 'learns. Hover or click an arrow; click a scope band or a totals row.');
views.forEach(function(v,vi){
 const sec=h('section',{class:'view'},app);
 const vh=h('div',{class:'vhead'},sec);
 h('b',{},vh,v.title);
 h('span',{},vh,'protocol '+v.protocol+' \u00b7 '+fmt(v.msgs.length)+' messages \u00b7 '+
   fmt(Math.max.apply(null,v.whole.rounds))+' rounds');
 const ck=h('span',{},vh);
 if(v.check===null){ck.textContent='no accounting snapshot: totals not cross-checked';}
 else if(v.check.length===0){ck.className='ok';ck.textContent='\u2713 totals from the '+
   'events = each party\u2019s accounting'+(v.merged?' (merged from '+v.merged+')':'');}
 else{ck.className='bad';ck.textContent='\u2717 events and accounting disagree: '+
   v.check[0];}
 if(v.failed)h('span',{class:'bad'},vh,'the run failed: transcripts stop where each '+
   'party stopped');
 const lg=h('div',{class:'legend'},vh);
 const kinds=[...new Set(v.tags.map(t=>t.kind))];
 kinds.forEach(k=>{const s=h('span',{},lg);const i=h('i',{},s);
   i.style.borderColor=COL[k]||'#111';s.appendChild(document.createTextNode(KIND[k]||k));});
 const s2=h('span',{},lg);const i2=h('i',{class:'dash'},s2);i2.style.borderColor='#6b7280';
 s2.appendChild(document.createTextNode('offline'));
 const row=h('div',{class:'row'},sec);
 const sc=h('div',{class:'scroll'},row);
 const panel=h('div',{class:'panel'},row);
 panel.innerHTML='<h3>Details</h3><p class="k">Hover an arrow for the message and its '+
  'narration (from the tag table mpcache explain uses).</p>';
 // layout
 const n=v.msgs.length;
 const depth=v.bands.reduce((a,b)=>Math.max(a,b[1]+1),0);
 const nr=new Set(v.msgs.map(m=>m[4])).size, avail=Math.max(500,(sc.clientWidth||1100)-112);
 const cw=Math.max(3,Math.min(14,avail/Math.max(1,n+0.7*nr))), gap=cw*0.7;
 const xs=new Array(n);let x=92,prev=null;const ticks=[];
 for(let i=0;i<n;i++){const r=v.msgs[i][4];
  if(r!==prev){if(prev!==null)x+=gap;ticks.push([x,r]);prev=r;} xs[i]=x;x+=cw;}
 const W=Math.max(x+20,600), bandH=17, top=22+depth*bandH+8, laneGap=96;
 const lanes=[];for(let p=0;p<v.parties;p++)lanes.push(top+28+p*laneGap);
 const H=lanes[lanes.length-1]+34;
 const svg=el('svg',{width:W,height:H,viewBox:'0 0 '+W+' '+H,role:'img'},sc);
 const defs=el('defs',{},svg);
 for(const k in COL){const m=el('marker',{id:'ah'+vi+k,viewBox:'0 0 10 10',refX:9,refY:5,
   markerWidth:5,markerHeight:5,orient:'auto-start-reverse'},defs);
   el('path',{d:'M0,0L10,5L0,10z',fill:COL[k]},m);}
 // round axis
 const step=Math.max(1,Math.ceil(ticks.length/(W/46)));
 el('text',{x:8,y:14,'font-size':11,fill:'#64748b'},svg,'round');
 ticks.forEach((t,j)=>{el('line',{x1:t[0]-gap/2,x2:t[0]-gap/2,y1:top,y2:H-6,stroke:'#eef2f7'},
   svg);if(j%step===0)el('text',{x:t[0],y:14,'font-size':10,fill:'#64748b'},svg,
   t[1]===0?'set-up':String(t[1]));});
 // scope bands and their shading behind the lanes
 const gb=el('g',{},svg);
 v.bands.forEach(b=>{const p=v.scopes[b[0]],x0=xs[b[2]]-1,x1=xs[b[3]]+cw+1;
  const hu=hue(p.split('/')[0]),y=22+b[1]*bandH;
  if(b[1]===0)el('rect',{x:x0,y:top,width:x1-x0,height:H-top-4,
    fill:'hsl('+hu+',70%,'+(96)+'%)'},gb);
  const g=el('g',{class:'band','data-scope':p},svg);
  el('rect',{x:x0,y:y,width:Math.max(2,x1-x0),height:bandH-2,rx:3,
    fill:'hsl('+hu+',65%,'+(80+b[1]*5)+'%)',stroke:'hsl('+hu+',45%,60%)'},g);
  const name=p.split('/').pop();
  if(x1-x0>name.length*6+6)el('text',{x:x0+4,y:y+11.5,'font-size':10.5,fill:'#1e293b'},g,
    name);
  el('title',{},g,p);
  g.addEventListener('click',()=>selScope(p));});
 // lanes
 lanes.forEach((y,p)=>{el('line',{x1:86,x2:W-10,y1:y,y2:y,stroke:'#94a3b8',
   'stroke-width':1.2},svg);
  el('text',{x:8,y:y-3,'font-size':13,'font-weight':600,fill:'#0f172a'},svg,'P'+p);
  el('text',{x:8,y:y+11,'font-size':9,fill:'#64748b'},svg,
    (v.roles[p]||'').replace(/^P\d+ /,''));});
 // arrows
 const ga=el('g',{class:'arrows'},svg);
 v.msgs.forEach((m,i)=>{const t=v.tags[m[2]],c=COL[t.kind]||'#111';
  const y1=lanes[m[0]],y2=lanes[m[1]],dir=y2>y1?1:-1,x1=xs[i]+cw*0.2,x2=xs[i]+cw*0.8;
  const g=el('g',{class:'msg','data-i':i,'data-tag':t.tag},ga);
  const a={x1:x1,y1:y1+dir*3,x2:x2,y2:y2-dir*4};
  const l=el('line',Object.assign({class:'vis',stroke:c,'marker-end':'url(#ah'+vi+t.kind+')'},
    a),g);
  if(m[5])l.setAttribute('stroke-dasharray','4 3');
  el('line',Object.assign({class:'hit'},a),g);
  g.addEventListener('mouseenter',()=>{if(!pinned)show(i);});
  g.addEventListener('click',(ev)=>{ev.stopPropagation();pin(i);});
  drawn++;});
 let pinned=null;
 function show(i){const m=v.msgs[i],t=v.tags[m[2]];
  const sh='('+m[8].join(',')+(m[8].length===1?',':'')+')';
  panel.innerHTML='';
  h('h3',{},panel,t.tag);
  if(pinned!==null)h('p',{class:'k'},panel,'pinned, with every '+t.tag+' message '+
    'highlighted: click the drawing to release');
  h('p',{},panel,'P'+m[0]+' \u2192 P'+m[1]+' \u00b7 '+(m[5]?'offline, held before round '+
    m[4]:'round '+m[4])+' \u00b7 '+fmt(m[3])+' B ('+m[7]+' '+sh+') \u00b7 scope '+
    (v.scopes[m[6]]||'(none)')+' \u00b7 seq '+m[9]);
  h('p',{},panel).innerHTML='<span class="k">step:</span> ';
  panel.lastChild.appendChild(document.createTextNode(t.title));
  const lo=h('p',{},panel);h('span',{class:'k'},lo,'local: ');
  lo.appendChild(document.createTextNode(t.local));
  const le=h('p',{class:'learns'},panel);h('b',{},le,'P'+m[1]+' learns: ');
  le.appendChild(document.createTextNode(t.learns+(t.why?' \u2014 '+t.why:'')));
  h('p',{class:'k'},panel,'this tag: '+fmt(t.n)+' messages, '+fmt(t.bytes)+' B in all');}
 function pin(i){pinned=null;show(i);pinned=i;show(i);
  const tag=v.tags[v.msgs[i][2]].tag;svg.classList.add('dim');
  ga.querySelectorAll('.msg').forEach(g=>{g.classList.toggle('same',
    g.getAttribute('data-tag')===tag);g.classList.toggle('sel',+g.getAttribute('data-i')===i);});}
 svg.addEventListener('click',()=>{pinned=null;svg.classList.remove('dim');
  ga.querySelectorAll('.sel').forEach(g=>g.classList.remove('sel'));});
 const hm=/pin=(\d+)/.exec(location.hash||'');
 if(vi===0&&hm&&+hm[1]<n)pin(+hm[1]);
 // totals panel per scope
 const tb=h('table',{class:'tot'},sec);
 const hr=h('tr',{},tb);
 ['scope','bytes P0','P1','P2','incl. (max)','msgs (max)','offline B (max)',
  'rounds (max)','crit. path'].forEach((c,j)=>h('th',{class:j?'':'s'},hr,c));
 const P=v.parties;
 function trow(name,b,inc,ms,off,rd,cr,key){const r=h('tr',{'data-scope':key},tb);
  h('td',{class:'s'},r,name);for(let p=0;p<P;p++)h('td',{},r,fmt(b[p]));
  h('td',{},r,inc);h('td',{},r,fmt(Math.max.apply(null,ms)));
  h('td',{},r,fmt(Math.max.apply(null,off)));h('td',{},r,rd);h('td',{},r,cr);
  r.addEventListener('click',()=>selScope(key));return r;}
 const w=v.whole;
 trow('(session total)',w.bytes_sent,fmt(Math.max.apply(null,w.bytes_sent)),
  w.messages_sent,w.offline_bytes_sent,fmt(Math.max.apply(null,w.rounds)),
  fmt(Math.max.apply(null,w.rounds)),'');
 v.totals.forEach(t=>{const d=t.scope.split('/').length-1;
  trow('\u2003'.repeat(d)+t.scope.split('/').pop(),t.bytes,fmt(Math.max.apply(null,t.incl)),
   t.msgs,t.offline,fmt(Math.max.apply(null,t.rounds)),t.crit===null?'-':fmt(t.crit),t.scope);});
 function selScope(p){tb.querySelectorAll('tr').forEach(r=>r.classList.toggle('cur',
   r.getAttribute('data-scope')===p&&p!==''));
  const t=v.totals.find(t=>t.scope===p);if(!t)return;
  panel.innerHTML='';h('h3',{},panel,'scope '+p);
  for(let q=0;q<P;q++)h('p',{},panel,'P'+q+': '+fmt(t.bytes[q])+' B sent here ('+
   fmt(t.incl[q])+' B with nested scopes), '+fmt(t.msgs[q])+' msgs, '+fmt(t.offline[q])+
   ' B offline, '+t.rounds[q]+' rounds');
  h('p',{class:'k'},panel,'critical-path rounds: '+(t.crit===null?'-':t.crit));
  svg.classList.add('dim');
  ga.querySelectorAll('.msg').forEach(g=>{const s=v.scopes[v.msgs[+g.getAttribute('data-i')][6]];
   g.classList.toggle('same',s===p||s.startsWith(p+'/'));});}
 // tags table
 const det=h('details',{},sec);h('summary',{},det,'protocol steps (tags) in this session');
 const tt=h('table',{class:'tot tags'},det);const th=h('tr',{},tt);
 ['tag','step','messages','bytes','receiver learns'].forEach((c,j)=>h('th',{class:
   j===0||j===1||j===4?'s':''},th,c));
 v.tags.slice().sort((a,b)=>b.bytes-a.bytes).forEach(t=>{const r=h('tr',{},tt);
  h('td',{class:'s t'},r,t.tag);h('td',{class:'s'},r,t.title);h('td',{},r,fmt(t.n));
  h('td',{},r,fmt(t.bytes));h('td',{class:'s'},r,KIND[t.kind]||t.kind);});
});
document.body.setAttribute('data-arrows',String(drawn));
document.title=document.title.replace(/\[not drawn\]$/,'['+drawn+' arrows]');
})();
"""


# -- command line (registered by mpcache/cli/teach.py) -------------------------------------------
def register_html(tsub) -> None:
    p = tsub.add_parser("html", help="write a transcript as one self-contained HTML page",
                        description="Draw a transcript (a file written with MPCACHE_TRACE / "
                        "Session(trace=FILE), or a folder of per-party files written by "
                        "`mpcache launch --trace DIR`) as one HTML page with no external "
                        "resources: party lanes, one arrow per message, scope bands, "
                        "narration on hover, totals per scope.  Docs: docs/teaching.md")
    p.add_argument("file", help="trace file, or a folder of per-party trace files")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--session", type=int, help="only the N-th session (0-based)")
    p.add_argument("--scope", help="only messages under this scope path")
    p.add_argument("--title", default="", help="page title (default: the file name)")
    p.set_defaults(func=_cli_html)


def _cli_html(a) -> int:
    import os
    import sys

    from .trace import read_for_command
    traces = read_for_command(a.file, "trace html")
    if traces is None:
        return 2
    if a.session is not None:
        traces = traces[a.session:a.session + 1]
    if not traces:
        print(f"mpcache trace html: {a.file} holds no session", file=sys.stderr)
        return 2
    try:
        n = write_html(traces, a.output, a.title or os.path.basename(a.file.rstrip("/")),
                       a.scope)
    except ValueError as e:
        print(f"mpcache trace html: {e}", file=sys.stderr)
        return 2
    bad = [m for t in traces for m in ((t.check() if t.stats else [])
                                       + list(t.meta.get("link_check") or []))]
    print(f"wrote {a.output}: {len(traces)} session(s), {n} messages (arrows)"
          + ("" if not bad else f"; WARNING: events and accounting disagree ({bad[0]})"))
    return 1 if bad else 0
