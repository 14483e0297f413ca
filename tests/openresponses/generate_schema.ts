// Regenerates schema.json (JSON Schema 2019-09) from the Open Responses compliance suite's zod schemas:
//   cp -r SUITE/src . && npm install zod@3.25.76 zod-to-json-schema@3.25.2 && bun run generate_schema.ts > schema.json
// where SUITE is the suite's folder (openresponses/, beside run-openresponses.sh). See NOTICE.
import { zodToJsonSchema } from "zod-to-json-schema";
import { z } from "zod";
import { responseResourceSchema } from "./src/generated/kubb/zod/responseResourceSchema";
import { streamingEventSchema } from "./src/lib/sse-parser";

const out = zodToJsonSchema(z.object({}), {
  definitions: { ResponseResource: responseResourceSchema, StreamingEvent: streamingEventSchema },
  target: "jsonSchema2019-09",
  removeAdditionalStrategy: "strict", // zod objects strip unknown keys, they do not reject them
});

// The generated zod has `schema: z.null()` for a json_schema text format, where the specification's
// JsonSchemaResponseFormat says `anyOf: [object, null]` (the generator lost the open object).
function fixJsonSchemaFormat(node: unknown): void {
  if (!node || typeof node !== "object") return;
  const obj = node as Record<string, any>;
  const props = obj.properties;
  if (props?.type?.enum?.[0] === "json_schema" && props.schema?.type === "null") {
    props.schema = { anyOf: [{ type: "object" }, { type: "null" }] };
  }
  for (const value of Object.values(obj)) fixJsonSchemaFormat(value);
}
fixJsonSchemaFormat(out);
console.log(JSON.stringify(out, null, 1));
