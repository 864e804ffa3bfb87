// Strawberry's GraphiQL page script (strawberry/static/graphiql.html), moved into a file
// so the page's Content-Security-Policy allows no inline script. Without js-cookie: its
// only use there is Django's csrftoken cookie, which this service neither sets nor reads.
"use strict";

const EXAMPLE_QUERY = `# GraphiQL for inventory-graphql, served by the service itself.
#
# Ctrl-Enter runs the query; Ctrl-Space completes. The docs (book icon)
# list every query, mutation and subscription.

{
  products(first: 5) {
    sku
    name
    available
  }
}
`;

// URL parameters, for sharing queries (URLSearchParams also decodes "+" as a space,
// which a form-encoded link uses).
const parameters = Object.fromEntries(new URLSearchParams(window.location.search));

function updateURL(data) {
  Object.assign(parameters, data);
  const kept = Object.entries(parameters).filter(([, value]) => Boolean(value));
  history.replaceState(null, "", "?" + new URLSearchParams(kept).toString());
}

const fetchURL = window.location.href.split("?")[0];

function webSocketURL(url) {
  const parsed = new URL(url);
  parsed.protocol = parsed.protocol === "http:" ? "ws:" : "wss:";
  parsed.hash = "";
  return parsed.toString();
}

// Queries and mutations over HTTP, subscriptions over graphql-transport-ws, same path.
const fetcher = GraphiQL.createFetcher({
  url: fetchURL,
  subscriptionUrl: webSocketURL(fetchURL),
});

function GraphiQLWithExplorer() {
  const [query, setQuery] = React.useState(parameters.q || EXAMPLE_QUERY);
  const [variables, setVariables] = React.useState(parameters.variables);
  const [headers, setHeaders] = React.useState(parameters.headers);
  const explorerPlugin = GraphiQLPluginExplorer.explorerPlugin();

  return React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultEditorToolsVisibility: true,
    plugins: [explorerPlugin],
    query: query,
    variables: variables,
    headers: headers,
    onEditQuery: (next) => {
      setQuery(next);
      updateURL({ q: next });
    },
    onEditVariables: (next) => {
      setVariables(next);
      updateURL({ variables: next });
    },
    onEditHeaders: setHeaders,
    inputValueDeprecation: true,
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: true,
  });
}

ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQLWithExplorer),
);
