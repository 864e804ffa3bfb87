from inventory_graphql.cli import main

raise SystemExit(main())
