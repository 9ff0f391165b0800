"""The instruction formats: alpaca (instruction/input/output) and prompt/completion."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from fragua.data.formats.columnar import Adapted, Adapter, AdapterOptions, RowErrors, build_adapted, domain_field, nonempty, text_field, with_nulls


def adapt_alpaca(table: pa.Table, options: AdapterOptions) -> Adapted:
    errors = RowErrors(table.num_rows)
    instruction = text_field(table, "instruction", errors, required=True)
    extra = text_field(table, "input", errors, required=False)
    output = text_field(table, "output", errors, required=True)
    system = text_field(table, "system", errors, required=False)
    domain = domain_field(table, errors)
    prompt = pc.binary_join_element_wise(instruction, with_nulls(extra, nonempty(extra)), "\n\n", null_handling="skip")
    parts = [("system", system, nonempty(system)), ("user", prompt, None), ("assistant", output, None)]
    return build_adapted(table, errors, parts, {"instruction", "input", "output", "system", "domain"}, answer=output, domain=domain)


def adapt_prompt_completion(table: pa.Table, options: AdapterOptions) -> Adapted:
    errors = RowErrors(table.num_rows)
    prompt = text_field(table, "prompt", errors, required=True)
    completion = text_field(table, "completion", errors, required=True)
    domain = domain_field(table, errors)
    parts = [("user", prompt, None), ("assistant", completion, None)]
    return build_adapted(table, errors, parts, {"prompt", "completion", "domain"}, answer=completion, domain=domain)


ADAPTERS: dict[str, Adapter] = {"alpaca": adapt_alpaca, "prompt_completion": adapt_prompt_completion}
