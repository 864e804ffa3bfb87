-- A request id that was never granted, claimed so that it never can be.
--
-- After a fault (a broken connection, a cancelled statement) the service cannot know from
-- the error whether a hold was committed. It settles the question with the reservation's
-- primary key: inserting a VOID row with the request's id waits for any transaction that
-- is still inserting that id, and then either finds the hold (it committed) or takes the
-- id for good (a late commit of the same id fails on the key). VOID rows have no lines and
-- no stock; they are the record that a client was told "not held".
ALTER TYPE reservation_status ADD VALUE 'VOID';
