// Compiled, never run (`npm run typecheck`): the contract's five events take their generated
// payload types, any other event takes any JSON. Each @ts-expect-error fails the check if the
// line below it stops being an error.
import { Redis } from "ioredis";
import { NotificationPublisher } from "../dist/index.js";
import type { CoinsEarned, PayloadOf } from "../dist/index.js";

export async function typed(publisher: NotificationPublisher): Promise<void> {
  const coins: CoinsEarned = { amount: 50, reason: "quiz", newBalance: 1250 };
  const position: string = await publisher.sendToUser(42, "coins:earned", coins);
  await publisher.sendToUser("42", "coins:earned", { amount: 1, reason: "r", newBalance: 2 });
  await publisher.sendToRoom("classroom:7", "rank:promoted", {
    oldRank: { name: "Ajaw", level: 1 }, newRank: { name: "Nacom", level: 2 }, xpRequired: 500,
  });
  await publisher.broadcastToAll("achievement:unlocked", {
    achievementId: "a", name: "n", description: "d", icon: "i", xpReward: 10,
  });
  // Any other event name: any JSON payload.
  await publisher.sendToRoom("quiz:9", "quiz:started", { anything: [1, "two", null] });
  await publisher.broadcastToAll("maintenance", "in 5 minutes");

  // @ts-expect-error: `amount` is a number in CoinsEarned
  await publisher.sendToUser(42, "coins:earned", { amount: "50", reason: "quiz", newBalance: 1250 });
  // @ts-expect-error: `newBalance` is missing
  await publisher.sendToUser(42, "coins:earned", { amount: 50, reason: "quiz" });
  // @ts-expect-error: NotificationRead needs readAt
  await publisher.sendToRoom("classroom:7", "notification:read", { notificationId: "n" });
  // @ts-expect-error: a user id is a string or a number
  await publisher.sendToUser({ id: 42 }, "x", {});

  const rooms: Record<string, string> = await publisher.joinRoom(42, ["classroom:7", "quiz:9"]);
  await publisher.leaveRoom("42", "quiz:9");
  const deleted: number = await publisher.disconnectUser(42);
  const online: boolean = await publisher.isOnline(42);
  await publisher.close();
  void [position, rooms, deleted, online];
}

export function constructible(): NotificationPublisher[] {
  const coins: PayloadOf<"coins:earned"> = { amount: 1, reason: "r", newBalance: 1 };
  const other: PayloadOf<"whatever"> = Symbol("unknown: checked at run time");
  void [coins, other];
  return [
    new NotificationPublisher("redis+cluster://a:7000,b:7001", { keyPrefix: "ngw", recoveryWindowS: 60 }),
    new NotificationPublisher(new Redis({ enableAutoPipelining: true })),
  ];
}

// docs/producers.md's NestJS WebSocketService, without the decorators: its generic forwarding
// keeps the contract's payload types.
export class WebSocketService {
  private readonly publisher = new NotificationPublisher(process.env.REDIS_URL!);

  sendToUser<E extends string>(userId: string, event: E, data: PayloadOf<E>) {
    return this.publisher.sendToUser(userId, event, data);
  }

  sendToRoom<E extends string>(room: string, event: E, data: PayloadOf<E>) {
    return this.publisher.sendToRoom(room, event, data);
  }

  broadcastToAll<E extends string>(event: E, data: PayloadOf<E>) {
    return this.publisher.broadcastToAll(event, data);
  }

  onModuleDestroy() {
    return this.publisher.close();
  }
}

export async function callers(ws: WebSocketService): Promise<void> {
  const position: string = await ws.sendToUser("42", "coins:earned", { amount: 5, reason: "r", newBalance: 6 });
  await ws.sendToRoom("classroom:7", "anything:else", [1, 2, 3]);
  // @ts-expect-error: reason is a string
  await ws.broadcastToAll("coins:earned", { amount: 5, reason: 1, newBalance: 6 });
  void position;
}
