"""Workflows: names, registration, typed input and output, and execution against memory backends."""

import datetime as dt
from typing import Any

import pytest
from pydantic import BaseModel

from agentflow import (
    ConfigurationError,
    InvalidInput,
    Workflow,
    WorkflowNotFound,
    component,
    registry,
    workflow,
)
from agentflow.core.errors import WorkflowAlreadyRegistered
from agentflow.core.memory import MemoryStore, run_in_memory


class Author(BaseModel):
    name: str
    email: str | None = None


class Summary(BaseModel):
    title: str
    words: int


# -- names, descriptions, registration ---------------------------------------------------------------------


def test_default_name_uses_dashes_and_description_the_docstring():
    @workflow
    def write_blog_post(topic: str) -> str:
        """Write a blog post.

        Research first, then write.
        """
        return topic

    assert isinstance(write_blog_post, Workflow)
    assert write_blog_post.name == "write-blog-post"
    assert write_blog_post.description == "Write a blog post.\n\nResearch first, then write."
    assert registry.get("write-blog-post") is write_blog_post
    assert "write-blog-post" in registry
    assert repr(write_blog_post) == "<Workflow write-blog-post>"


def test_explicit_name_and_description():
    @workflow(name="core.explicit_v2", description="Given.")
    def something() -> None:
        """Ignored."""

    assert (something.name, something.description) == ("core.explicit_v2", "Given.")
    assert registry.get("core.explicit_v2") is something
    assert "something" not in registry


def test_empty_description_is_kept_and_a_missing_docstring_is_empty():
    @workflow(description="")
    def flow_documented() -> None:
        """Docstring."""

    @workflow
    def flow_undocumented() -> None:
        pass

    assert flow_documented.description == ""
    assert flow_undocumented.description == ""


@pytest.mark.parametrize("name", ["Upper", "has space", "a" * 101, "-leading", "_leading", "a/b", "é"])
def test_bad_names_are_rejected(name):
    def fn() -> None: ...

    before = {wf.name for wf in registry.all()}
    with pytest.raises(TypeError, match="workflow name"):
        workflow(name=name)(fn)
    assert {wf.name for wf in registry.all()} == before


def test_empty_name_means_the_default():
    def flow_unnamed() -> None: ...

    assert workflow(name="")(flow_unnamed).name == "flow-unnamed"


def test_longest_allowed_name():
    name = "a" * 100
    assert workflow(name=name)(lambda: None).name == name


def test_function_name_that_is_no_valid_name_needs_an_explicit_name():
    def CamelCase() -> None: ...

    with pytest.raises(TypeError, match="CamelCase"):
        workflow(CamelCase)
    assert workflow(name="camel-case")(CamelCase).name == "camel-case"


def test_two_functions_with_one_name_are_an_error():
    @workflow(name="core-duplicate")
    def first() -> int:
        return 1

    def second() -> int:
        return 2

    with pytest.raises(WorkflowAlreadyRegistered, match="core-duplicate") as info:
        workflow(name="core-duplicate")(second)
    assert isinstance(info.value, ConfigurationError)
    assert info.value.code == "workflow_already_registered"
    assert registry.get("core-duplicate") is first


def test_the_same_function_registered_again_replaces_itself():
    # What a module reload does: same qualified name, new object.
    def reloaded() -> int:
        return 1

    old = workflow(name="core-reloaded")(reloaded)
    new = workflow(name="core-reloaded")(reloaded)
    assert new is not old
    assert registry.get("core-reloaded") is new


def test_unknown_workflow_is_not_found():
    with pytest.raises(WorkflowNotFound) as info:
        registry.get("core-no-such-workflow")
    assert info.value.code == "workflow_not_found"
    assert info.value.details["workflow"] == "core-no-such-workflow"
    assert "core-no-such-workflow" not in registry


def test_registry_lists_workflows_sorted_by_name():
    workflow(name="core-zz")(lambda: None)
    workflow(name="core-aa")(lambda: None)
    names = [wf.name for wf in registry.all()]
    assert names == sorted(names)
    assert {"core-aa", "core-zz"} <= set(names)


def test_unregister_forgets_and_ignores_unknown_names():
    workflow(name="core-gone")(lambda: None)
    registry.unregister("core-gone")
    registry.unregister("core-gone")
    assert "core-gone" not in registry


@pytest.mark.parametrize(
    "fn",
    [
        lambda *args: None,
        lambda **kwargs: None,
        lambda a, *rest: None,
    ],
)
def test_variadic_parameters_are_rejected(fn):
    with pytest.raises(TypeError, match="every parameter needs a name"):
        workflow(name="core-variadic")(fn)
    assert "core-variadic" not in registry


def test_positional_only_parameters_are_rejected():
    def positional(a: int, /) -> None: ...

    with pytest.raises(TypeError, match="positional-only"):
        workflow(positional)


def test_decorator_rejects_bad_targets_and_options():
    @workflow
    def flow_once() -> None: ...

    with pytest.raises(TypeError, match="plain function"):
        workflow(flow_once)
    with pytest.raises(TypeError, match="plain function"):
        workflow(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="nmae"):
        workflow(nmae="x")  # type: ignore[call-overload]


def test_calling_a_workflow_runs_the_function_with_plain_components():
    @component
    def shout(text: str) -> str:
        return text.upper()

    @workflow
    def flow_direct(text: str) -> str:
        return shout(text) + "!"

    assert flow_direct("hi") == "HI!"


# -- input -------------------------------------------------------------------------------------------------


def make_input_workflow() -> Workflow[..., Any]:
    @workflow
    def flow_inputs(
        topic: str, count: int = 3, tags: list[str] | None = None, author: Author | None = None
    ) -> str:
        return topic

    return flow_inputs


def test_input_defaults_are_applied():
    wf = make_input_workflow()
    assert wf.validate_input({"topic": "otters"}) == {
        "topic": "otters",
        "count": 3,
        "tags": None,
        "author": None,
    }


def test_input_is_normalised_to_json():
    wf = make_input_workflow()
    data = wf.validate_input({"topic": "x", "count": 5, "tags": ("a", "b"), "author": Author(name="Ann")})
    assert data == {"topic": "x", "count": 5, "tags": ["a", "b"], "author": {"name": "Ann", "email": None}}


def field_errors(exc: InvalidInput) -> dict[str, str]:
    return {error["field"]: error["code"] for error in exc.details}


def test_invalid_input_lists_field_errors():
    wf = make_input_workflow()
    with pytest.raises(InvalidInput) as info:
        wf.validate_input({"count": "many", "author": {"email": "a@b"}, "topci": "typo"})
    assert field_errors(info.value) == {
        "topic": "missing",
        "count": "int_type",
        "author.name": "missing",
        "topci": "extra_forbidden",
    }
    assert all(error["message"] for error in info.value.details)
    assert info.value.code == "invalid_input"
    assert info.value.as_dict()["details"] == info.value.details
    assert "flow-inputs" in info.value.message


def test_missing_input_is_an_empty_object():
    wf = make_input_workflow()
    with pytest.raises(InvalidInput) as info:
        wf.validate_input(None)
    assert field_errors(info.value) == {"topic": "missing"}


@pytest.mark.parametrize("data", [["topic"], "topic", 3])
def test_input_that_is_no_object_is_rejected(data):
    wf = make_input_workflow()
    with pytest.raises(InvalidInput, match="must be a JSON object") as info:
        wf.validate_input(data)
    assert info.value.details == [
        {"field": "", "code": "object_type", "message": "Input should be an object"}
    ]


def test_run_in_memory_validates_input():
    wf = make_input_workflow()
    with pytest.raises(InvalidInput):
        run_in_memory(wf, {"topic": "x", "extra": 1})


def test_stored_input_is_bound_with_its_types():
    received = {}

    @workflow
    def flow_typed_input(author: Author, day: dt.date, count: int = 2) -> str:
        received.update(author=author, day=day, count=count)
        return author.name

    data = flow_typed_input.validate_input({"author": {"name": "Ann"}, "day": "2024-05-01"})
    output, _ = run_in_memory(flow_typed_input, data)
    assert output == "Ann"
    assert received == {"author": Author(name="Ann"), "day": dt.date(2024, 5, 1), "count": 2}


def test_input_schema():
    schema = make_input_workflow().input_schema()
    assert schema["type"] == "object"
    assert schema["required"] == ["topic"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["topic"]["type"] == "string"
    assert schema["properties"]["count"] == {"default": 3, "title": "Count", "type": "integer"}
    assert "Author" in schema["$defs"]
    assert schema["title"] == "FlowInputsInput"


def test_untyped_parameters_accept_anything():
    @workflow
    def flow_untyped(anything, other=None):
        return anything

    assert flow_untyped.validate_input({"anything": [1, {"a": 2}]}) == {
        "anything": [1, {"a": 2}],
        "other": None,
    }
    assert flow_untyped.output_schema() == {}


# -- output ------------------------------------------------------------------------------------------------


def test_output_schema_from_the_return_annotation():
    @workflow
    def flow_model_output() -> Summary:
        return Summary(title="t", words=1)

    @workflow
    def flow_list_output() -> list[int]:
        return []

    @workflow
    def flow_any_output():
        return None

    schema = flow_model_output.output_schema()
    assert schema["title"] == "Summary"
    assert set(schema["properties"]) == {"title", "words"}
    assert flow_list_output.output_schema() == {"type": "array", "items": {"type": "integer"}}
    assert flow_any_output.output_schema() == {}


def test_output_is_dumped_as_json():
    @workflow
    def flow_json_output() -> dict:
        return {"summary": Summary(title="t", words=2), "day": dt.date(2024, 1, 2), "pair": (1, 2)}

    output, _ = run_in_memory(flow_json_output)
    assert output == {"summary": {"title": "t", "words": 2}, "day": "2024-01-02", "pair": [1, 2]}


def test_async_workflow_runs_in_memory():
    @component
    async def double(x: int) -> int:
        return x * 2

    @workflow
    async def flow_async(x: int) -> int:
        return await double(x) + await double(x + 1)

    output, ctx = run_in_memory(flow_async, {"x": 1})
    assert output == 6
    assert ctx.steps_executed == 2


# -- typed step outputs ------------------------------------------------------------------------------------


def test_typed_step_outputs_are_rebuilt_on_replay():
    calls = []
    seen: list[Any] = []

    @component
    def summarise(text: str) -> Summary:
        calls.append(text)
        return Summary(title=text, words=len(text.split()))

    @component
    def many(n: int) -> list[Summary]:
        return [Summary(title=str(i), words=i) for i in range(n)]

    @component
    def when() -> dt.datetime:
        return dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)

    @component
    def pair() -> tuple[int, str]:
        return (1, "a")

    @component
    def untyped():
        return {"k": [1, 2]}

    @workflow
    def flow_typed_steps(text: str) -> dict:
        values = [summarise(text), many(2), when(), pair(), untyped()]
        seen.append(values)
        return {"words": values[0].words}

    store = MemoryStore()
    first, _ = run_in_memory(flow_typed_steps, {"text": "a b"}, store=store)
    second, ctx = run_in_memory(flow_typed_steps, {"text": "a b"}, store=store)
    assert first == second == {"words": 2}
    assert calls == ["a b"]
    assert ctx.steps_replayed == 5
    live, replayed = seen
    assert replayed == live
    assert isinstance(replayed[0], Summary)
    assert all(isinstance(s, Summary) for s in replayed[1])
    assert replayed[2] == dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    assert replayed[3] == (1, "a")
    assert replayed[4] == {"k": [1, 2]}
    # What the store holds is plain JSON.
    assert store.records["summarise#0"].output == {"title": "a b", "words": 2}
    assert store.records["when#0"].output == "2024-05-01T12:30:00Z"


def test_an_unknown_name_suggests_close_names_and_says_where_workflows_were_looked_for():
    from agentflow.core.workflow import Discovery, Registry

    local = Registry()
    local.register(workflow(name="core-summarize")(lambda: None))
    registry.unregister("core-summarize")
    error = local.not_found("core_summarise")
    assert str(error) == "no workflow is named 'core_summarise'. Did you mean 'core-summarize'?"
    assert error.details == {"workflow": "core_summarise", "suggestions": ["core-summarize"]}

    local.discovery = Discovery(modules=("blog.workflows",), scanned=("django.contrib.admin", "blog"))
    assert str(local.not_found("zzz")) == (
        "no workflow is named 'zzz'. Registered: 'core-summarize'. Workflows are registered when their module "
        "is imported: agentflow imports <app>/workflows.py of every installed app (2 scanned; found: "
        "blog.workflows). A workflow defined elsewhere is registered only once something imports its module."
    )
