"""Extract cmdlet pages of MicrosoftDocs/office-docs-powershell into exo-cmdlets.json's shape."""
# Used once (psrpface, issue 13) to write coexist/data/exo-cmdlets-rbac.json from a checkout of
# MicrosoftDocs/office-docs-powershell; usage: python tools/extract_cmdlet_pages.py NAME... > out.json
# (set REPO below to the checkout). Kept for provenance; not part of the package.
import json, re, subprocess, sys
REPO = "/work/.mirror/MicrosoftDocs+office-docs-powershell/repo"
COMMIT = "93336da2bca96c31c0fc8acc52658a30ef8a6c94"
ONPREM = ("Exchange Server 2010", "Exchange Server 2013", "Exchange Server 2016", "Exchange Server 2019", "Exchange Server SE")

def page(name):
    return subprocess.run(["git", "-C", REPO, "show", f"{COMMIT}:exchange/exchange-ps/ExchangePowerShell/{name}.md"], capture_output=True, text=True, check=True).stdout

def applic(line):
    return [a.strip() for a in line.split(":", 1)[1].split(",")]

def extract(name):
    text = page(name)
    front = re.search(r"^applicable: (.*)$", text, re.M).group(1)
    applicable = [a.strip() for a in front.split(",")]
    syntax = text.split("## SYNTAX", 1)[1].split("## DESCRIPTION", 1)[0]
    sets = {}
    blocks = [(m.group(1), m.group(2)) for m in re.finditer(r"### (\S+)\n```\n(.*?)```", syntax, re.S)]
    if not blocks:  # one unnamed SYNTAX block: the implicit set (exo-cmdlets.json conventions)
        blocks = [("__AllParameterSets", re.search(r"```\n(.*?)```", syntax, re.S).group(1))]
    for set_name, block in blocks:
        body = block.replace("[<CommonParameters>]", "").replace(name, "", 1)
        req, opt = [], []
        for tok in re.finditer(r"(\[*)-(\w+)", body):
            (opt if tok.group(1) and not tok.group(1).startswith("[[") or tok.group(1) == "[" else req).append(tok.group(2))
        # '[[-Name] <T>]' is optional positional; '[-Name] <T>' (one bracket directly before, closed before type) mandatory positional
        req2, opt2 = [], []
        for tok in re.finditer(r"(\[\[|\[)?-(\w+)(\])?( <)?", body):
            lead, pname, close, typed = tok.groups()
            if lead == "[[" or (lead == "[" and not (close and typed)):
                opt2.append(pname)
            else:
                req2.append(pname)
        sets[set_name] = {"required": req2, "optional": opt2}
    params = {}
    psec = text.split("## PARAMETERS", 1)[1].split("\n## ", 1)[0]
    for m in re.finditer(r"### -(\w+)\n(.*?)(?=\n### -|\Z)", psec, re.S):
        pname, body = m.group(1), m.group(2)
        app = applic(re.search(r"> Applicable: (.*)", body).group(0))
        y = dict(re.findall(r"^(Type|Parameter Sets|Aliases|Required|Position|Default value|Accept pipeline input|Accept wildcard characters): ?(.*)$", body, re.M))
        psets = list(sets) if y["Parameter Sets"].strip() == "(All)" else [s.strip() for s in y["Parameter Sets"].split(",")]
        params[pname] = {
            "type": y["Type"].strip(), "sets": psets,
            "required_in_sets": [s for s in psets if pname in sets.get(s, {}).get("required", [])],
            "exchange_online": "Exchange Online" in app,
            "on_premises": any(a in ONPREM for a in app),
            "aliases": [a.strip() for a in y["Aliases"].split(",") if a.strip()],
            "accepts_wildcards": y["Accept wildcard characters"].strip() == "True",
            "position": y["Position"].strip(), "accept_pipeline_input": y["Accept pipeline input"].strip(),
            "default_value": y["Default value"].strip(), "required_yaml": y["Required"].strip() == "True",
            "applicable": app, "availability_note": None,
        }
    for sname, s in sets.items():
        s["exchange_online_usable"] = all(params[r]["exchange_online"] for r in s["required"])
        s["on_premises_usable"] = all(params[r]["on_premises"] for r in s["required"])
    syn = re.search(r"## SYNOPSIS\n(.*?)\n", text).group(1)
    return {
        "exchange_online_cmdlet": "Exchange Online" in applicable,
        "on_premises_cmdlet": any(a in ONPREM for a in applicable),
        "applicable": applicable, "synopsis_availability": syn,
        "default_parameter_set_marked_in_doc": None, "parameter_sets": sets, "parameters": params, "doc_issues": [],
    }

out = {"source": f"MicrosoftDocs/office-docs-powershell exchange/exchange-ps/ExchangePowerShell (commit {COMMIT})",
       "note": "Cmdlets missing from ../shared/spec/exo-cmdlets.json, extracted from the same docs commit by tools/extract_cmdlet_pages.py (conventions as in exo-cmdlets.json).",
       "cmdlets": {n: extract(n) for n in sys.argv[1:]}}
print(json.dumps(out, indent=1))
