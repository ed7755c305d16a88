// How a frontend uses notifications.d.ts with socket.io-client; type-checked by
// tests/unit/test_typescript_decl.py (`tsc -p tsconfig.json`), never run.
import { io, type Socket } from "socket.io-client";
import type {
  ClientToServerEvents,
  CoinsEarned,
  HandshakeAuth,
  HandshakeErrorData,
  ServerToClientEvents,
  SubscribeAck,
} from "./notifications";

declare function getToken(): Promise<string>;
declare function show(text: string): void;

const auth: HandshakeAuth = { token: "Bearer <jwt>" };
const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(
  "https://notifications.example.com/notifications",
  { auth: (cb) => { getToken().then((token) => cb({ token })); }, autoConnect: false },
);
void auth;

socket.on("connect", () => {
  show(socket.recovered ? "back, nothing missed" : "new session");
  socket.emit("subscribe:notifications", (ack: SubscribeAck) => {
    if (ack.ok) show(ack.rooms.join(", "));
    else show(ack.error);
  });
});

socket.on("coins:earned", (data: CoinsEarned, offset?: string) => {
  const balance: number = data.newBalance;
  show(`${balance} (${offset ?? "no offset"})`);
});
socket.on("rank:promoted", ({ oldRank, newRank }) => show(`${oldRank.name} -> ${newRank.name}`));
socket.on("notification:new", (n) => show(`${n.title}: ${n.message} ${n.createdAt} ${n.data?.["link"] ?? ""}`));

socket.on("connect_error", (err) => {
  const code = (err as Error & { data?: HandshakeErrorData }).data?.code;
  if (code === "token_expired") void getToken().then(() => socket.connect());
});

socket.on("disconnect", (reason) => {
  if (reason === "io server disconnect") void getToken().then(() => socket.connect());
});

async function subscribe(): Promise<string[]> {
  const ack = await socket.timeout(5000).emitWithAck("subscribe:notifications");
  const withPayload = await socket.emitWithAck("subscribe:notifications", {});
  return ack.ok && withPayload.ok ? ack.rooms : [];
}
void subscribe;

// @ts-expect-error: not an event of the contract
socket.on("coins:spent", () => undefined);
// @ts-expect-error: a string is not a number
const wrong: CoinsEarned = { amount: "5", reason: "quiz", newBalance: 10 };
void wrong;
// @ts-expect-error: clients may emit nothing else
socket.emit("notification:new", {});
