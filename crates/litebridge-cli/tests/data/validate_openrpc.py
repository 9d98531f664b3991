"""Validates the OpenRPC document on stdin (tests/openrpc.rs).

Against the OpenRPC meta-schema in this directory, with json-schema.tools'
schema of JSON schemas (which the meta-schema refers to for every `schema`
member) served from the vendored copy, never fetched; then each method's
examples against its parameters' schemas. Prints the first complaints and
exits 1 if there are any.
"""
import json
import sys

try:
    import jsonschema
    import referencing
except ImportError:
    sys.exit("this test needs Python jsonschema: pip install jsonschema")

data = sys.argv[1]
schema = json.load(open(data + "/openrpc-meta-schema.json"))
tools = json.load(open(data + "/json-schema-tools-meta-schema.json"))
tools = referencing.Resource.from_contents(
    tools, default_specification=referencing.jsonschema.DRAFT7
)
registry = referencing.Registry().with_resources(
    [("https://meta.json-schema.tools", tools), ("https://meta.json-schema.tools/", tools)]
)
doc = json.load(sys.stdin)
errors = sorted(
    jsonschema.Draft7Validator(schema, registry=registry).iter_errors(doc), key=str
)
complaints = [f"{list(e.absolute_path)} {e.message}" for e in errors]
if not complaints:
    for m in doc.get("methods", []):
        schemas = {p["name"]: p["schema"] for p in m["params"]}
        for example in m.get("examples", []):
            for p in example["params"]:
                validator = jsonschema.Draft7Validator(schemas[p["name"]])
                for e in validator.iter_errors(p["value"]):
                    complaints.append(f"{m['name']} example: `{p['name']}` {e.message}")
for c in complaints[:5]:
    print(c)
sys.exit(1 if complaints else 0)
