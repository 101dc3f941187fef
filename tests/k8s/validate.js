// Validate Kubernetes custom resources (Argo Rollouts, Istio, Gateway API) against the
// schemas their projects publish in their CRDs, as packaged by kubernetes-models.
//
// Usage: node validate.js MANIFESTS.json  (a JSON list of objects)
// Prints a JSON list with one entry per object: {"kind", "name", "errors": [...]}.
//
// The CRD schemas are structural: the API server prunes unknown fields instead of refusing
// them, so a misspelt field would pass silently and do nothing. Like `kubectl apply
// --validate=strict`, every object schema that lists its properties here also refuses
// properties it does not list (unless it preserves unknown fields).
"use strict";

const fs = require("fs");
const Ajv = require("ajv");
const addFormats = require("ajv-formats");
const validateModule = require("@kubernetes-models/validate");

// Capture each schema as kubernetes-models registers it.
const schemas = new Map();
const register = validateModule.register;
validateModule.register = (id, schema) => {
  schemas.set(id, schema);
  register(id, schema);
};

const MODELS = {
  "argoproj.io/v1alpha1": require("@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1"),
  "networking.istio.io/v1beta1": require("@kubernetes-models/istio/networking.istio.io/v1beta1"),
  "gateway.networking.k8s.io/v1": require("@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1"),
};

function modelFor(manifest) {
  const group = MODELS[manifest.apiVersion];
  const Model = group && group[manifest.kind];
  return typeof Model === "function" ? Model : null;
}

function strict(schema) {
  if (Array.isArray(schema)) {
    return schema.map(strict);
  }
  if (schema === null || typeof schema !== "object") {
    return schema;
  }
  const copy = {};
  for (const [key, value] of Object.entries(schema)) {
    copy[key] = key === "enum" || key === "required" ? value : strict(value);
  }
  const listed = copy.properties && Object.keys(copy.properties).length > 0;
  if (listed && copy.additionalProperties === undefined && !copy["x-kubernetes-preserve-unknown-fields"]) {
    copy.additionalProperties = false;
  }
  return copy;
}

function main() {
  const manifests = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const models = manifests.map(modelFor);
  // Registering happens on a model's first validation: run each once to collect schemas.
  for (let i = 0; i < manifests.length; i++) {
    if (models[i]) {
      try {
        new models[i](manifests[i]).validate();
      } catch (error) {
        // judged below, strictly
      }
    }
  }
  const ajv = new Ajv({ strictTypes: false, strict: false, allErrors: true });
  addFormats(ajv);
  for (const name of ["int32", "int64", "byte", "quantity", "string", "double", "float"]) {
    ajv.addFormat(name, true);
  }
  for (const [id, schema] of schemas) {
    ajv.addSchema(strict(schema), id);
  }
  const results = manifests.map((manifest, i) => {
    const entry = { kind: manifest.kind, name: (manifest.metadata || {}).name, errors: [] };
    if (!models[i]) {
      entry.errors.push(`no schema for ${manifest.apiVersion} ${manifest.kind}`);
      return entry;
    }
    const check = ajv.getSchema(models[i].schemaId || schemaIdOf(models[i]));
    if (!check) {
      entry.errors.push(`schema of ${manifest.kind} was not registered`);
      return entry;
    }
    if (!check(manifest)) {
      entry.errors = check.errors
        .filter((error) => error.keyword !== "oneOf" && !(error.keyword === "type" && error.params.type === "null"))
        .map((error) => `${error.instancePath || "/"} ${error.message}` +
          (error.params.additionalProperty ? `: ${error.params.additionalProperty}` : ""));
    }
    return entry;
  });
  process.stdout.write(JSON.stringify(results) + "\n");
}

function schemaIdOf(Model) {
  const [group, version] = Model.apiVersion.includes("/") ? Model.apiVersion.split("/") : ["", Model.apiVersion];
  return `${group}.${version}.${Model.kind}`;
}

main();
