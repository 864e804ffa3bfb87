"""Compiled operations: a known query or mutation executed from a plan made once.

graphql-core decides the same things on every request for a document it has seen
thousands of times: which fields a selection set holds once fragments are expanded, each
field's definition and return type, how to complete each value, which literal arguments
a field has. A plan decides them once per (document, operation) and keeps the answers as
closures; executing it only calls the schema's own resolvers (Strawberry's, with their
argument conversion and permission classes) and completes what they return, as
graphql-core would: the same data in the same order, the same errors at the same paths,
null propagating to the nearest nullable field (tests/unit/test_compiled.py compares both
on every document the demo and the tests send).

Only graphql-core's public API is used. A document is not compiled (None: the caller
runs it the ordinary way) when a plan could not decide something once: a subscription,
`@skip` / `@include` on a variable, `@defer` / `@stream`, introspection (`__schema`,
`__type`), or an operation that is missing or ambiguous.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from inspect import isawaitable
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLAbstractType,
    GraphQLError,
    GraphQLField,
    GraphQLIncludeDirective,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLResolveInfoHelpers,
    GraphQLSchema,
    GraphQLSkipDirective,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    TypeNameMetaFieldDef,
    Undefined,
    VariableNode,
    VariableValues,
    coerce_input_value,
    get_argument_values,
    get_directive_values,
    get_operation_ast,
    get_variable_values,
    is_abstract_type,
    is_leaf_type,
    located_error,
    type_from_ast,
    visit,
)
from graphql.execution.get_variable_signature import (
    GraphQLVariableSignature,
    get_variable_signature,
)
from graphql.execution.values import VariableValueSource
from graphql.language import Visitor
from graphql.pyutils import Path, is_awaitable

# A completer turns what a resolver returned into response data (or an awaitable of it).
Completer = Callable[[Any, Path, "FieldPlan", "Run"], Any]
DirectCall = Callable[[Any, GraphQLResolveInfo[Any], dict[str, Any]], Any]
NO_VARIABLES = VariableValues({}, {})
_CANNOT_COMPILE = {"defer", "stream"}
_INTROSPECTION = {"__schema", "__type"}


class NotCompilable(Exception):
    """Something a plan cannot decide once; the operation runs the ordinary way."""


@dataclass
class Run:
    """One execution of a plan: what its resolvers see, and the errors it met."""

    plan: Plan
    context: Any
    variables: VariableValues
    errors: list[GraphQLError] = field(default_factory=list)

    def info(self, field_plan: FieldPlan, path: Path) -> GraphQLResolveInfo[Any]:
        plan = self.plan
        return GraphQLResolveInfo(
            field_plan.name,
            field_plan.nodes,
            field_plan.definition.type,
            field_plan.parent_type,
            path,
            plan.schema,
            plan.fragments,
            None,
            plan.operation,
            self.variables,
            self.context,
            is_awaitable,
            None,
            _HELPERS,
        )


async def _gather(values: Sequence[Awaitable[Any]]) -> list[Any]:
    return list(await asyncio.gather(*values))


# graphql-core's executor tracks asynchronous work a resolver starts without awaiting; the
# service's resolvers await what they start, so a plan only offers gather.
def _untracked(values: Sequence[Any]) -> None:
    raise NotImplementedError("compiled operations track no detached resolver work")


_HELPERS = GraphQLResolveInfoHelpers(gather=_gather, track=_untracked)


@dataclass(eq=False)
class FieldPlan:
    key: str  # the response key (alias or name)
    name: str
    nodes: list[FieldNode]
    parent_type: GraphQLObjectType
    definition: GraphQLField
    resolve: Callable[..., Any] | None  # None: __typename
    basic: bool  # a plain attribute: Strawberry's resolver reads it without an info
    static_arguments: dict[str, Any] | None  # None: they depend on variables
    # The field's resolver called as its framework's wrapper would, given the arguments
    # as one dict (None: the wrapper, graphql-core's `resolve`, is called).
    direct: DirectCall | None = None
    complete: Completer = field(init=False)


@dataclass(eq=False)
class ObjectPlan:
    type: GraphQLObjectType
    fields: list[FieldPlan]


@dataclass(eq=False)
class Plan:
    schema: GraphQLSchema
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    root: ObjectPlan
    serial: bool  # a mutation's root fields run one after another
    root_field: str  # the first root field (operation metrics label by it)
    # Each variable's signature, and whether it has a default.
    variables: list[tuple[GraphQLVariableSignature, bool]] = field(default_factory=list)

    @property
    def kind(self) -> OperationType:
        return self.operation.operation

    async def execute(
        self, context: Any, variables: VariableValues
    ) -> tuple[dict[str, Any] | None, list[GraphQLError]]:
        """The operation's data and errors, as graphql-core's `execute` gives them."""
        run = Run(self, context, variables)
        root = self.root
        try:
            if self.serial:
                data: dict[str, Any] = {}
                for field_plan in root.fields:
                    value = _execute_field(field_plan, None, None, run)
                    data[field_plan.key] = await value if isawaitable(value) else value
            else:
                result = _execute_fields(root, None, None, run)
                data = await result if isawaitable(result) else result
        except GraphQLError as error:  # a non-null root field failed
            run.errors.append(error)
            return None, run.errors
        return data, run.errors


def compile_operation(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    is_basic: Callable[[str, str], bool],
    direct: Mapping[tuple[str, str], DirectCall] | None = None,
) -> Plan:
    """A plan for the named operation of a valid document; NotCompilable when none fits.

    `is_basic(type_name, field_name)` says whether a field's resolver is a plain attribute
    read that needs no info, and `direct` has the resolvers that can be called with their
    arguments as one dict (the schema's framework knows both).
    """
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        raise NotCompilable("no such operation, or several and no name")
    if operation.operation is OperationType.SUBSCRIPTION:
        raise NotCompilable("subscriptions stream")
    _refuse_dynamic(document)
    root_type = (
        schema.query_type if operation.operation is OperationType.QUERY else schema.mutation_type
    )
    if root_type is None:
        raise NotCompilable("the schema has no such root type")
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    compiler = _Compiler(schema, fragments, is_basic, direct or {})
    root = compiler.object_plan(root_type, [operation.selection_set])
    if not root.fields:
        raise NotCompilable("nothing selected")
    return Plan(
        schema,
        operation,
        fragments,
        root,
        serial=operation.operation is OperationType.MUTATION,
        root_field=root.fields[0].name,
        variables=_signatures(schema, operation),
    )


def coerce_variables(
    plan: Plan, inputs: dict[str, Any] | None
) -> VariableValues | list[GraphQLError]:
    """The operation's variables as graphql-core's get_variable_values coerces them.

    Its work per request that depends only on the document (each variable's signature,
    read from the AST) is done once per plan; a value it would refuse, and a missing
    one with a default, are left to it (it words the errors). It also checks that the
    input is not nested past the interpreter's recursion limit: request_guards has
    refused anything nested deeper than its limit before this runs.
    """
    inputs = inputs or {}
    sources: dict[str, VariableValueSource] = {}
    coerced: dict[str, Any] = {}
    for signature, has_default in plan.variables:
        name = signature.name
        value = inputs.get(name, Undefined)
        if value is Undefined:
            if has_default or isinstance(signature.type, GraphQLNonNull):
                break
            sources[name] = VariableValueSource(signature)
            continue  # a nullable variable not given is omitted
        sources[name] = VariableValueSource(signature, value)
        coerced_value = coerce_input_value(value, signature.type)
        if coerced_value is Undefined:
            break
        coerced[name] = coerced_value
    else:
        return VariableValues(sources, coerced)
    return get_variable_values(plan.schema, plan.operation.variable_definitions or (), inputs)


def _signatures(
    schema: GraphQLSchema, operation: OperationDefinitionNode
) -> list[tuple[GraphQLVariableSignature, bool]]:
    signatures = []
    for definition in operation.variable_definitions or ():
        signature = get_variable_signature(schema, definition)
        if isinstance(signature, GraphQLError):
            raise NotCompilable("a variable of no input type")  # validation says so
        signatures.append((signature, definition.default_value is not None))
    return signatures


def _refuse_dynamic(document: DocumentNode) -> None:
    class Refuse(Visitor):
        def enter_directive(self, node: Any, *_: Any) -> None:
            if node.name.value in _CANNOT_COMPILE:
                raise NotCompilable(f"@{node.name.value}")
            for argument in node.arguments or ():
                if isinstance(argument.value, VariableNode):
                    raise NotCompilable(f"@{node.name.value} on a variable")

        def enter_field(self, node: Any, *_: Any) -> None:
            if node.name.value in _INTROSPECTION:
                raise NotCompilable("introspection")

    visit(document, Refuse())


class _Compiler:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        is_basic: Callable[[str, str], bool],
        direct: Mapping[tuple[str, str], DirectCall],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.is_basic = is_basic
        self.direct = direct

    def object_plan(
        self, type_: GraphQLObjectType, selection_sets: list[SelectionSetNode]
    ) -> ObjectPlan:
        grouped: dict[str, list[FieldNode]] = {}
        for selection_set in selection_sets:
            self._collect(type_, selection_set, grouped, set())
        return ObjectPlan(
            type_, [self._field_plan(type_, key, nodes) for key, nodes in grouped.items()]
        )

    def _collect(
        self,
        type_: GraphQLObjectType,
        selection_set: SelectionSetNode,
        grouped: dict[str, list[FieldNode]],
        visited: set[str],
    ) -> None:
        # graphql-core's collect_fields, with every directive's value known here.
        for selection in selection_set.selections:
            if not _included(selection):
                continue
            if isinstance(selection, FieldNode):
                key = selection.alias.value if selection.alias else selection.name.value
                grouped.setdefault(key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                if self._applies(selection.type_condition, type_):
                    self._collect(type_, selection.selection_set, grouped, visited)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in visited:
                    continue
                visited.add(name)
                fragment = self.fragments.get(name)
                if fragment is not None and self._applies(fragment.type_condition, type_):
                    self._collect(type_, fragment.selection_set, grouped, visited)

    def _applies(self, condition: Any, type_: GraphQLObjectType) -> bool:
        if condition is None:
            return True
        conditional = type_from_ast(self.schema, condition)
        if conditional is type_:
            return True
        return is_abstract_type(conditional) and self.schema.is_sub_type(conditional, type_)

    def _field_plan(self, parent: GraphQLObjectType, key: str, nodes: list[FieldNode]) -> FieldPlan:
        name = nodes[0].name.value
        if name == "__typename":
            plan = FieldPlan(key, name, nodes, parent, TypeNameMetaFieldDef, None, False, {})
            plan.complete = _typename
            return plan
        definition = parent.fields[name]
        node = nodes[0]
        static = (
            None if _has_variables(node) else get_argument_values(definition, node, NO_VARIABLES)
        )
        plan = FieldPlan(
            key,
            name,
            nodes,
            parent,
            definition,
            definition.resolve,
            self.is_basic(parent.name, name),
            static,
            self.direct.get((parent.name, name)),
        )
        if plan.resolve is None:
            raise NotCompilable(f"{parent.name}.{name} has no resolver")
        plan.complete = self._completer(definition.type, nodes)
        return plan

    def _completer(self, type_: GraphQLOutputType, nodes: list[FieldNode]) -> Completer:
        if isinstance(type_, GraphQLNonNull):
            return _non_null(self._completer(type_.of_type, nodes))
        if isinstance(type_, GraphQLList):
            item = type_.of_type
            return _nullable(
                _list(self._completer(item, nodes), nullable=not isinstance(item, GraphQLNonNull))
            )
        if is_leaf_type(type_):
            return _nullable(_leaf(type_))
        if isinstance(type_, GraphQLObjectType):
            return _nullable(_object(self._sub_plan(type_, nodes)))
        assert isinstance(type_, GraphQLAbstractType)
        plans = {
            possible.name: self._sub_plan(possible, nodes)
            for possible in self.schema.get_possible_types(type_)
        }
        return _nullable(_abstract(type_, plans))

    def _sub_plan(self, type_: GraphQLObjectType, nodes: list[FieldNode]) -> ObjectPlan:
        return self.object_plan(type_, [n.selection_set for n in nodes if n.selection_set])


def _included(node: Any) -> bool:
    skip = get_directive_values(GraphQLSkipDirective, node, NO_VARIABLES)
    if skip and skip.get("if") is True:
        return False
    include = get_directive_values(GraphQLIncludeDirective, node, NO_VARIABLES)
    return not (include and include.get("if") is False)


def _has_variables(node: FieldNode) -> bool:
    found = False

    class Find(Visitor):
        def enter_variable(self, *_: Any) -> None:
            nonlocal found
            found = True

    for argument in node.arguments or ():
        visit(argument, Find())
    return found


def _typename(value: Any, path: Path, plan: FieldPlan, run: Run) -> Any:
    return plan.parent_type.name


# Executing fields, as graphql-core's execute_fields / execute_field do.


def _execute_fields(
    object_plan: ObjectPlan, source: Any, path: Path | None, run: Run
) -> dict[str, Any] | Awaitable[dict[str, Any]]:
    values = [_execute_field(f, source, path, run) for f in object_plan.fields]
    pending = [i for i, value in enumerate(values) if isawaitable(value)]
    if not pending:
        return {f.key: value for f, value in zip(object_plan.fields, values, strict=True)}

    async def settled() -> dict[str, Any]:
        results = await asyncio.gather(*(values[i] for i in pending))
        for i, result in zip(pending, results, strict=True):
            values[i] = result
        return {f.key: value for f, value in zip(object_plan.fields, values, strict=True)}

    return settled()


def _execute_field(plan: FieldPlan, source: Any, parent: Path | None, run: Run) -> Any:
    path = Path(parent, plan.key, plan.parent_type.name)
    if plan.resolve is None:  # __typename
        return plan.parent_type.name
    try:
        if plan.basic:
            value = plan.resolve(source, None)
        else:
            info = run.info(plan, path)
            arguments = plan.static_arguments
            if arguments is None:
                arguments = get_argument_values(plan.definition, plan.nodes[0], run.variables)
            if plan.direct is not None:
                value = plan.direct(source, info, arguments)
            else:
                value = plan.resolve(source, info, **arguments)
        if isawaitable(value):
            return _complete_later(value, path, plan, run)
        completed = plan.complete(value, path, plan, run)
        if isawaitable(completed):
            return _settle_later(completed, path, plan, run)
        return completed
    except Exception as raw:
        return _field_error(raw, path, plan, run)


async def _complete_later(value: Awaitable[Any], path: Path, plan: FieldPlan, run: Run) -> Any:
    try:
        completed = plan.complete(await value, path, plan, run)
        return await completed if isawaitable(completed) else completed
    except Exception as raw:
        return _field_error(raw, path, plan, run)


async def _settle_later(completed: Awaitable[Any], path: Path, plan: FieldPlan, run: Run) -> Any:
    try:
        return await completed
    except Exception as raw:
        return _field_error(raw, path, plan, run)


def _field_error(raw: Exception, path: Path, plan: FieldPlan, run: Run) -> None:
    error = located_error(raw, plan.nodes, path.as_list())
    if isinstance(plan.definition.type, GraphQLNonNull):
        raise error  # the parent field is nulled, or the data
    run.errors.append(error)
    return None


# Completing values, as graphql-core's complete_value does.


def _nullable(complete: Completer) -> Completer:
    def nullable(value: Any, path: Path, plan: FieldPlan, run: Run) -> Any:
        if value is None:
            return None
        if isinstance(value, Exception):
            raise value
        return complete(value, path, plan, run)

    return nullable


def _non_null(complete: Completer) -> Completer:
    def non_null(value: Any, path: Path, plan: FieldPlan, run: Run) -> Any:
        completed = complete(value, path, plan, run)
        if isawaitable(completed):

            async def checked() -> Any:
                return _not_null(await completed, plan)

            return checked()
        return _not_null(completed, plan)

    return non_null


def _not_null(completed: Any, plan: FieldPlan) -> Any:
    if completed is None:
        raise TypeError(
            f"Cannot return null for non-nullable field {plan.parent_type.name}.{plan.name}."
        )
    return completed


def _leaf(type_: Any) -> Completer:
    serialize = type_.serialize

    def leaf(value: Any, path: Path, plan: FieldPlan, run: Run) -> Any:
        serialized = serialize(value)
        if serialized is None or serialized is Undefined:
            raise TypeError(
                f"Expected `{type_.name}.serialize({value!r})` to return non-nullable value,"
                f" returned: {serialized!r}"
            )
        return serialized

    return leaf


def _list(complete_item: Completer, *, nullable: bool) -> Completer:
    def complete_list(value: Any, path: Path, plan: FieldPlan, run: Run) -> Any:
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            raise GraphQLError(
                "Expected Iterable, but did not find one for field"
                f" '{plan.parent_type.name}.{plan.name}'."
            )
        items = []
        pending = False
        for index, item in enumerate(value):
            item_path = path.add_key(index, None)
            try:
                completed = complete_item(item, item_path, plan, run)
                if isawaitable(completed):
                    completed = _item_later(completed, item_path, plan, run, nullable)
                    pending = True
            except Exception as raw:
                _item_error(raw, item_path, plan, run, nullable)
                completed = None
            items.append(completed)
        if not pending:
            return items

        async def settled() -> list[Any]:
            return list(await asyncio.gather(*(_awaited(item) for item in items)))

        return settled()

    return complete_list


async def _awaited(value: Any) -> Any:
    return await value if isawaitable(value) else value


async def _item_later(
    completed: Awaitable[Any], path: Path, plan: FieldPlan, run: Run, nullable: bool
) -> Any:
    try:
        return await completed
    except Exception as raw:
        _item_error(raw, path, plan, run, nullable)
        return None


def _item_error(raw: Exception, path: Path, plan: FieldPlan, run: Run, nullable: bool) -> None:
    error = located_error(raw, plan.nodes, path.as_list())
    if not nullable:
        raise error
    run.errors.append(error)
    return None


def _object(object_plan: ObjectPlan) -> Completer:
    is_type_of = object_plan.type.is_type_of

    def complete_object(value: Any, path: Path, plan: FieldPlan, run: Run) -> Any:
        if is_type_of is not None and not is_type_of(value, run.info(plan, path)):
            raise GraphQLError(
                f"Expected value of type '{object_plan.type.name}' but got: {value!r}.",
                plan.nodes,
            )
        return _execute_fields(object_plan, value, path, run)

    return complete_object


def _abstract(type_: GraphQLAbstractType, plans: dict[str, ObjectPlan]) -> Completer:
    completers = {name: _object(plan) for name, plan in plans.items()}
    resolve_type = type_.resolve_type

    def complete_abstract(value: Any, path: Path, plan: FieldPlan, run: Run) -> Any:
        if resolve_type is None:
            raise NotImplementedError(f"{type_.name} resolves no type")
        name = resolve_type(value, run.info(plan, path), type_)
        complete = completers.get(name) if isinstance(name, str) else None
        if complete is None:
            raise GraphQLError(
                f"Abstract type '{type_.name}' must resolve to an Object type at runtime"
                f" for field '{plan.parent_type.name}.{plan.name}'. Either the '{type_.name}'"
                " type should provide a 'resolve_type' function or each possible type should"
                " provide an 'is_type_of' function.",
                plan.nodes,
            )
        return complete(value, path, plan, run)

    return complete_abstract
